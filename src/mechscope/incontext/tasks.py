"""`Task`: an in-context task as (input, output) pairs and the template that writes them
into a prompt, with loaders (JSONL, CSV) and built-ins (`zoo:icl`'s tasks, a few for
`zoo:pycode`).

A k-shot prompt is k demonstrations and a query joined by the template's separator:
``n3 -> n4 ; n10 -> n11 ; n7 ->``; the model should then say the query's output. The
task is never named in the prompt. Outputs of several tokens are scored by their first
token (the one the model predicts right after the query); ``single_token=True`` refuses
them instead.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import MechscopeError


@dataclass(frozen=True)
class Template:
    """How a pair is written (``{x}`` and ``{y}``) and how pairs are joined."""

    pair: str = "{x} -> {y}"
    """One demonstration; the query is the text before ``{y}`` with trailing spaces cut."""
    separator: str = " ; "
    """Between demonstrations (and before the query)."""

    def __post_init__(self) -> None:
        if self.pair.count("{x}") != 1 or not self.pair.endswith("{y}"):
            raise MechscopeError(
                f"template {self.pair!r} must hold {{x}} once and end with {{y}}: e.g. '{{x}} -> {{y}}'"
            )

    def demo(self, x: str, y: str) -> str:
        return self.pair.replace("{x}", x).replace("{y}", y)

    def query(self, x: str) -> str:
        return self.pair.removesuffix("{y}").rstrip().replace("{x}", x)

    def answer_text(self, y: str) -> str:
        """The output as it follows the query (with the space the template puts before it)."""
        head = self.pair.removesuffix("{y}")
        return head[len(head.rstrip()) :] + y

    def prompt(self, demos: list[tuple[str, str]], x: str) -> str:
        return self.separator.join([*(self.demo(a, b) for a, b in demos), self.query(x)])


@dataclass(frozen=True)
class Task:
    """An in-context task: (input, output) pairs and their template.

    Invariants (checked when made): at least two pairs (a prompt needs a demonstration
    besides its query); inputs and outputs are non-empty strings; frozen once made.

        task = Task("antonyms", (("hot", "cold"), ("up", "down"), ("big", "small")))
        fv = ms.incontext.function_vector(model, task)
    """

    name: str
    pairs: tuple[tuple[str, str], ...]
    template: Template = Template()

    def __post_init__(self) -> None:
        pairs = tuple(
            (p[0], p[1]) if isinstance(p, (list, tuple)) and len(p) == 2 else (None, None) for p in self.pairs
        )
        bad = [i for i, (x, y) in enumerate(pairs) if not (isinstance(x, str) and isinstance(y, str) and x and y)]
        if bad:
            raise MechscopeError(
                f"task '{self.name}': pair {bad[0]} ({self.pairs[bad[0]]!r}) is not two non-empty strings "
                "(input, output)"
            )
        if len(pairs) < 2:
            raise MechscopeError(
                f"task '{self.name}' has {len(pairs)} pair(s): give at least 2 (one demonstration and one query)"
            )
        object.__setattr__(self, "pairs", pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def split(self, fraction: float = 0.5, seed: int = 0) -> tuple[Task, Task]:
        """(fit, held-out) tasks on disjoint pairs, `fraction` of them in the first."""
        order = list(self.pairs)
        random.Random(seed).shuffle(order)
        cut = min(max(2, round(fraction * len(order))), len(order) - 2)
        if cut < 2:
            raise MechscopeError(f"task '{self.name}' has {len(self)} pairs: at least 4 are needed to split it")
        return replace(self, pairs=tuple(order[:cut])), replace(self, pairs=tuple(order[cut:]))


def load_task(path: str | Path, template: Template | None = None) -> Task:
    """A task from a JSONL file (``{"input": ..., "output": ...}`` per line) or a CSV file
    with ``input`` and ``output`` columns; named after the file."""
    path = Path(path)
    if not path.is_file():
        raise MechscopeError(f"task file {path} does not exist: give a .jsonl or .csv file of input/output pairs")
    rows: list = []
    try:
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        elif path.suffix in (".jsonl", ".json"):
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            raise MechscopeError(f"task file {path}: unknown format {path.suffix!r}; use .jsonl or .csv")
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as err:
        raise MechscopeError(f"task file {path} is not valid {path.suffix[1:]} ({err})") from None
    if any(not isinstance(r, dict) or "input" not in r or "output" not in r for r in rows):
        raise MechscopeError(f"task file {path}: every row needs an 'input' and an 'output' field")
    return Task(path.stem, tuple((r["input"], r["output"]) for r in rows), template or Template())


PYCODE_TEMPLATE = Template(pair="{x}{y}", separator="\n")
"""pycode's tasks are lines of code: the demonstration is the line itself."""
PYCODE_WORDS = ("name value data path size key text args mode count items parent result index line error").split()
"""Common attribute names, each one token after a space for zoo:pycode's tokenizer."""


def _pycode_tasks() -> dict[str, Task]:
    """Tasks for `zoo:pycode` (each to be screened: see `function_vector.screen`): copy the
    attribute's name into the value of an assignment in ``__init__``."""
    public = tuple((f"        self.{w} =", f" {w}") for w in PYCODE_WORDS)
    private = tuple((f"        self._{w} =", f" {w}") for w in PYCODE_WORDS)
    return {
        "pycode/attribute-copy": Task("pycode/attribute-copy", public, PYCODE_TEMPLATE),
        "pycode/private-attribute-copy": Task("pycode/private-attribute-copy", private, PYCODE_TEMPLATE),
    }


def builtin_tasks() -> dict[str, Task]:
    """Name -> task: ``icl/<task>`` for each `zoo:icl` task, ``pycode/...`` for zoo:pycode."""
    from ..zoo.icl import IclRecipe, task_pairs

    icl = {f"icl/{name}": Task(f"icl/{name}", tuple(pairs)) for name, pairs in task_pairs(IclRecipe()).items()}
    return {**icl, **_pycode_tasks()}


def get_task(name_or_path: str | Path | Task) -> Task:
    """A built-in task by name, or a task file (.jsonl / .csv)."""
    if isinstance(name_or_path, Task):
        return name_or_path
    known = builtin_tasks()
    if str(name_or_path) in known:
        return known[str(name_or_path)]
    if Path(name_or_path).suffix in (".jsonl", ".json", ".csv"):
        return load_task(name_or_path)
    raise MechscopeError(f"unknown task {str(name_or_path)!r}: give a .jsonl/.csv file or one of {', '.join(known)}")
