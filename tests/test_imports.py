"""The core imports cleanly: each core module alone in a fresh interpreter, and no import
cycle among the core modules (read from their source, lazy imports inside functions too)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import mechscope

PACKAGE = Path(mechscope.__file__).parent
CORE = (
    "mechscope.model",
    "mechscope.hooks",
    "mechscope.run",
    "mechscope.edits",
    "mechscope.sites",
    "mechscope.weights",
    "mechscope.io",
    "mechscope.folders",
    "mechscope.errors",
    "mechscope.models.loading",
    "mechscope.models.families",
    "mechscope.module_model",
    "mechscope.hooked_model",
)


def _file(module: str) -> Path | None:
    path = PACKAGE.parent / module.replace(".", "/")
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(module: str, lazy: bool) -> set[str]:
    """The mechscope modules `module` imports: at import time, or (lazy) anywhere in it. A
    package above `module` is left out: it is already importing when `module` runs."""
    path = _file(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if lazy else _top_level(tree.body)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(p for p in (base, node.module) if p)
            names = [target, *(f"{target}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")  # importing a.b.c imports a.b first
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in found if m.startswith("mechscope") and _file(m) and not f"{module}.".startswith(f"{m}.")}


def _top_level(body):
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for part in (
                node.body,
                getattr(node, "orelse", []),
                getattr(node, "finalbody", []),
                *(h.body for h in getattr(node, "handlers", [])),
            ):
                yield from _top_level(part)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph`, or None (depth-first search)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node):
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = 2, path.pop()
        return None

    return next((c for node in sorted(graph) if node not in state and (c := visit(node))), None)


def test_no_import_cycle_from_the_core():
    graph, todo = {}, list(CORE)
    while todo:  # every mechscope module the core imports at import time
        module = todo.pop()
        if module not in graph:
            graph[module] = _imports(module, lazy=False)
            todo += graph[module]
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    core = {m: _imports(m, lazy=True) & set(CORE) for m in CORE}  # lazy imports too, among the core
    assert _cycle(core) is None, f"import cycle among the core: {' -> '.join(_cycle(core))}"
    assert "mechscope.models.loading" not in core["mechscope.model"]


def test_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


ALONE = """
import importlib, json, sys
failed = {}
for name in sys.argv[1:]:
    for key in [k for k in sys.modules if k == "mechscope" or k.startswith("mechscope.")]:
        del sys.modules[key]  # third-party modules stay: each core module imports mechscope alone
    try:
        importlib.import_module(name)
    except Exception as err:
        failed[name] = f"{type(err).__name__}: {err}"
print(json.dumps(failed))
"""


def test_each_core_module_imports_alone():
    done = subprocess.run(
        [sys.executable, "-c", ALONE, *CORE], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.slow  # a fresh interpreter importing torch per module: ~10 s each on a busy 2-core machine
@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_in_a_fresh_interpreter(module):
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
