"""`Task`: the clean / corrupted prompt pairs that patching and circuit discovery compare.

A task holds token ids for a clean batch and a corrupted batch of the same shape (pair i
is row i of both), the correct next token of each clean prompt (`answers`), optionally a
foil (`wrong`, e.g. the answer the corrupted prompt points to) for a logit difference, and
where the metric reads the logits (`position`, counted within each row: -1 is each row's
own last real token). Rows may have different lengths (right-padded, `mask` says which
tokens are real), but a clean prompt and its corrupted partner must tokenise to the same
length, so that position p means the same slot in both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from ..errors import MechscopeError


@dataclass(frozen=True)
class Task:
    """Clean / corrupted prompt pairs with the answer each clean prompt should give.

    Invariants (checked when made): `clean` and `corrupt` have the same shape, row i of one
    paired with row i of the other; one answer (and foil, when given) per row; `mask`, when
    given, has the tokens' shape; `position` lies inside every row; frozen once made.

        task = Task.from_tokens([[5, 9, 14, 9]], [[5, 9, 21, 9]], answers=[14], wrong=[21])
        result = ms.patching.sweep(model, task, ms.patching.logit_diff(task), sweep="resid")
    """

    clean: Int[Tensor, "batch pos"]
    """Token ids of the clean prompts (right-padded where rows differ in length)."""
    corrupt: Int[Tensor, "batch pos"]
    """Token ids of the corrupted prompts; row i has the same length as clean row i."""
    answers: Int[Tensor, " batch"]
    """The correct next token of each clean prompt, read at `position`."""
    wrong: Int[Tensor, " batch"] | None = None
    """A foil per prompt (the corrupted prompt's answer) for logit differences; may be None."""
    position: int = -1
    """Where the metric reads the logits, within each row (negative: from the row's end)."""
    mask: Int[Tensor, "batch pos"] | None = None
    """1 for real tokens, 0 for padding; None when every row is full length."""

    def __post_init__(self) -> None:
        clean, corrupt = _ids(self.clean, "clean"), _ids(self.corrupt, "corrupt")
        object.__setattr__(self, "clean", clean)
        object.__setattr__(self, "corrupt", corrupt)
        if clean.shape[0] == 0 or clean.shape[1] == 0:
            raise MechscopeError("the task is empty: give at least one clean/corrupt pair of non-empty prompts")
        if clean.shape != corrupt.shape:
            raise MechscopeError(
                f"clean tokens have shape {tuple(clean.shape)} but corrupt tokens "
                f"{tuple(corrupt.shape)}: give one corrupted prompt of the same length per clean one"
            )
        n = clean.shape[0]
        answers = torch.as_tensor(self.answers, dtype=torch.long).reshape(-1)
        if len(answers) != n:
            raise MechscopeError(f"{len(answers)} answers for {n} prompts: give one answer token per prompt")
        object.__setattr__(self, "answers", answers)
        if self.wrong is not None:
            wrong = torch.as_tensor(self.wrong, dtype=torch.long).reshape(-1)
            if len(wrong) != n:
                raise MechscopeError(f"{len(wrong)} wrong tokens for {n} prompts: give one per prompt (or none)")
            object.__setattr__(self, "wrong", wrong)
        if self.mask is not None:
            mask = torch.as_tensor(self.mask).long()
            if mask.shape != clean.shape:
                raise MechscopeError(f"mask has shape {tuple(mask.shape)} but the tokens {tuple(clean.shape)}")
            object.__setattr__(self, "mask", mask)
        index = self.index()
        if bool((index < 0).any() or (index >= self.lengths).any()):
            raise MechscopeError(
                f"position {self.position} falls outside some prompts (lengths {sorted(set(self.lengths.tolist()))})"
            )

    # What metrics and methods read

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        """Real tokens per row."""
        if self.mask is None:
            return torch.full((len(self),), self.clean.shape[1], dtype=torch.long)
        return self.mask.sum(-1)

    def index(self) -> Int[Tensor, " batch"]:
        """The absolute position at which the metric reads each row's logits."""
        if self.position < 0:
            return self.lengths + self.position
        return torch.full((len(self),), self.position, dtype=torch.long)

    def read(self, logits: Tensor) -> Tensor:
        """logits [batch, pos, vocab] -> [batch, vocab] at each row's read position.
        Logits already cut to one position ([batch, vocab]) pass through."""
        if logits.dim() == 2:
            return logits
        if logits.shape[0] != len(self):
            raise MechscopeError(f"logits for {logits.shape[0]} prompts given to a task of {len(self)}")
        rows = torch.arange(len(self), device=logits.device)
        return logits[rows, self.index().to(logits.device)]

    def attention_mask(self) -> Tensor:
        return torch.ones_like(self.clean) if self.mask is None else self.mask

    def to(self, device) -> "Task":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Task(
            self.clean.to(device),
            self.corrupt.to(device),
            self.answers.to(device),
            move(self.wrong),
            self.position,
            move(self.mask),
        )

    # Building tasks

    @classmethod
    def from_tokens(cls, clean, corrupt, answers, wrong=None, position: int = -1) -> "Task":
        """From token ids: lists of lists (rows may differ in length; pairs may not) or tensors."""
        if isinstance(clean, Tensor) and isinstance(corrupt, Tensor):
            return cls(clean, corrupt, answers, wrong, position)
        clean_rows, corrupt_rows = [list(map(int, r)) for r in clean], [list(map(int, r)) for r in corrupt]
        _check_pairs(clean_rows, corrupt_rows, [str(r) for r in clean_rows], [str(r) for r in corrupt_rows])
        ids_clean, mask = _pad(clean_rows, 0)
        ids_corrupt, _ = _pad(corrupt_rows, 0)
        return cls(ids_clean, ids_corrupt, answers, wrong, position, None if bool(mask.all()) else mask)

    @classmethod
    def from_prompts(
        cls,
        model,
        clean: list[str],
        corrupt: list[str],
        answers: list[str],
        wrong: list[str] | None = None,
        align: str | None = None,
        position: int = -1,
    ) -> "Task":
        """From text: each clean/corrupt pair must tokenise to the same length, and each
        answer (and wrong token) must be exactly one token, e.g. " Mary" with its space."""
        if align is not None:
            raise MechscopeError(
                f"align={align!r} is not supported: padding one prompt of a pair would move the "
                "answer position in one of them; rephrase the corrupted prompt so that both "
                "tokenise to the same length"
            )
        if model.tokenizer is None:
            raise MechscopeError(
                f"{model.name} has no tokenizer: build the task from token ids with "
                "Task.from_tokens(...) (or a task file with lists of ids)"
            )
        for what, items in (("clean", clean), ("corrupt", corrupt), ("answers", answers)):
            if isinstance(items, str) or not all(isinstance(s, str) for s in items):
                raise MechscopeError(f"{what} must be a list of strings")
        if not clean:
            raise MechscopeError("the task is empty: give at least one clean/corrupt pair")
        counts = {"clean": len(clean), "corrupt": len(corrupt), "answers": len(answers)}
        if wrong is not None:
            counts["wrong"] = len(wrong)
        if len(set(counts.values())) != 1:
            raise MechscopeError(
                f"the task's lists differ in length ({counts}): give one corrupted prompt, one answer "
                "(and one wrong token) per clean prompt"
            )
        tok = model.tokenizer
        clean_rows = [tok(text)["input_ids"] for text in clean]
        corrupt_rows = [tok(text)["input_ids"] for text in corrupt]
        _check_pairs(clean_rows, corrupt_rows, clean, corrupt)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids_clean, mask = _pad(clean_rows, pad)
        ids_corrupt, _ = _pad(corrupt_rows, pad)
        answer_ids = [_one_token(model, a, "answer") for a in answers]
        wrong_ids = None if wrong is None else [_one_token(model, w, "wrong token") for w in wrong]
        return cls(
            ids_clean,
            ids_corrupt,
            torch.tensor(answer_ids),
            None if wrong_ids is None else torch.tensor(wrong_ids),
            position,
            None if bool(mask.all()) else mask,
        )

    @classmethod
    def from_file(cls, model, path) -> "Task":
        """From a JSON or YAML file: {"clean": [...], "corrupt": [...], "answers": [...],
        "wrong": [...], "position": -1}. Prompts are strings, or lists of token ids (then
        answers and wrong are ids too)."""
        data = _read_task_file(Path(path))
        missing = [k for k in ("clean", "corrupt", "answers") if k not in data]
        if missing:
            raise MechscopeError(f"task file '{path}' lacks {missing}: it needs clean, corrupt and answers lists")
        unknown = set(data) - {"clean", "corrupt", "answers", "wrong", "position"}
        if unknown:
            raise MechscopeError(
                f"task file '{path}' has unknown keys {sorted(unknown)} (known: clean, corrupt, "
                "answers, wrong, position)"
            )
        position = int(data.get("position", -1))
        clean, corrupt = data["clean"], data["corrupt"]
        if not isinstance(clean, list) or not isinstance(corrupt, list) or not clean:
            raise MechscopeError(f"task file '{path}': clean and corrupt must be non-empty lists")
        if all(isinstance(r, list) for r in clean + corrupt):
            if len(clean) != len(corrupt):
                raise MechscopeError(f"task file '{path}': {len(clean)} clean but {len(corrupt)} corrupt prompts")
            return cls.from_tokens(clean, corrupt, data["answers"], data.get("wrong"), position)
        return cls.from_prompts(model, clean, corrupt, data["answers"], data.get("wrong"), position=position)


def _ids(x, what: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16, torch.bool):
        raise MechscopeError(f"{what} must be integer token ids [batch, pos], got {t.dtype} of shape {tuple(t.shape)}")
    return t.long()


def _check_pairs(clean_rows, corrupt_rows, clean_text, corrupt_text) -> None:
    if len(clean_rows) != len(corrupt_rows):
        raise MechscopeError(
            f"{len(clean_rows)} clean but {len(corrupt_rows)} corrupted prompts: give one per clean prompt"
        )
    if not clean_rows:
        raise MechscopeError("the task is empty: give at least one clean/corrupt pair")
    for i, (a, b) in enumerate(zip(clean_rows, corrupt_rows)):
        if len(a) != len(b):
            raise MechscopeError(
                f"pair {i}: the clean prompt {clean_text[i]!r} is {len(a)} tokens but the corrupted "
                f"{corrupt_text[i]!r} is {len(b)}: patching compares the same positions, so each pair "
                "must tokenise to the same length"
            )
        if not a:
            raise MechscopeError(f"pair {i}: the prompts are empty")


def _pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def _one_token(model, token, what: str) -> int:
    if isinstance(token, int) and not isinstance(token, bool):
        if not 0 <= token < model.dims.d_vocab:
            raise MechscopeError(f"{what} id {token} is outside the vocabulary (0-{model.dims.d_vocab - 1})")
        return token
    if not isinstance(token, str):
        raise MechscopeError(f"{what} must be a string of one token or a token id, got {token!r}")
    ids = model.tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        raise MechscopeError(
            f"{what} {token!r} is {len(ids)} tokens {pieces}, not one: give a single token "
            "(mind the leading space, e.g. ' Mary')"
        )
    return ids[0]


def _read_task_file(path: Path) -> dict:
    if not path.is_file():
        raise MechscopeError(
            f"task file '{path}' {'is a folder' if path.is_dir() else 'does not exist'}: give a .json or .yaml file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise MechscopeError(
            f"cannot read task file '{path}' ({err.__class__.__name__}): give a UTF-8 .json or .yaml file"
        ) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise MechscopeError(
                f"'{path}' is YAML but PyYAML is not installed: `pip install pyyaml`, or write the task as JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None) or "cannot parse"
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise MechscopeError(f"task file '{path}' is not valid YAML{where}: {problem}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise MechscopeError(
                f"task file '{path}' is not valid JSON ({err}); YAML files need a .yaml suffix"
            ) from None
    if not isinstance(data, dict):
        raise MechscopeError(f"task file '{path}' must hold a mapping with clean, corrupt and answers lists")
    return data
