"""DESIGN §2, arrows down only: the zoo (models layer) imports no method and no surface.
Methods reach the zoo through `zoo.register_analysis` instead (mechscope.toys does)."""

from __future__ import annotations

import ast
from pathlib import Path

import mechscope
from mechscope import zoo

ZOO = Path(zoo.__file__).parent
UPPER = {
    "attribution",
    "circuits",
    "concepts",
    "dictionary",
    "features",
    "heads",
    "incontext",
    "lens",
    "patching",
    "probes",
    "steering",
    "structure",
    "toys",
    "vision",
    "cli",
    "commands",
    "report",
    "server",
}
"""Method and surface packages (everything above core and models)."""
KNOWN: dict[str, set[str]] = {}
"""Up-arrows still to remove (none left)."""


def upper_imports(path: Path) -> set[str]:
    """Method/surface packages that a zoo source file imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level != 1:  # level 1 stays inside the zoo
            base = ".".join(p for p in ("mechscope" if node.level >= 2 else "", node.module or "") if p)
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("mechscope.") and n.split(".")[1] in UPPER}
    return found


def test_the_scan_sees_every_import_form(tmp_path):
    src = tmp_path / "x.py"
    src.write_text(
        "from ..lens import logit\nimport mechscope.toys.grokking\ndef f():\n    from mechscope import patching\n"
        "    from .. import report\n    from .transformer import ToyConfig\n    from ..io import write_text\n"
    )
    assert upper_imports(src) == {"lens", "toys", "patching", "report"}


def test_zoo_imports_no_method_or_surface():
    files = sorted(ZOO.glob("*.py"))
    assert {"modadd.py", "superposition.py", "__init__.py"} <= {f.name for f in files}
    wrong = {f.name: upper_imports(f) - KNOWN.get(f.name, set()) for f in files}
    assert not {k: v for k, v in wrong.items() if v}, "the zoo imports upward (DESIGN §2)"
    assert UPPER >= {
        p.name for p in Path(mechscope.__file__).parent.iterdir() if p.is_dir() and (p / "__init__.py").is_file()
    } - {"models", "zoo"}


def test_toys_register_the_zoo_analyses():
    import mechscope.toys  # noqa: F401  registers

    assert {"modadd", "superposition", "induction"} <= set(zoo.ANALYSES)
    for name in ("modadd", "superposition"):
        assert zoo.ANALYSES[name].after_train is not None and zoo.ANALYSES[name].plots is not None
    assert zoo.ANALYSES["induction"].monitor is not None and zoo.ANALYSES["induction"].plots is not None
