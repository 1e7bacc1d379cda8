"""What the commands share for parsing: argparse types that reject a bad value at parse time (before
any work), the help formatter that shows defaults, and config defaults and docs read without imports."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def int_list(text: str) -> list[int]:
    """'-1' or '0,3,-1' -> [ints] (argparse type)."""
    try:
        return [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _whole(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected a whole number, {low} or more, got {text!r}")
    return value


def count(text: str) -> int:
    """A whole number, 0 or more (argparse type for how-many options)."""
    return _whole(text, 0)


def positive(text: str) -> int:
    """A whole number, 1 or more (argparse type)."""
    return _whole(text, 1)


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help lists every option's default, except where there is none (None, a flag's False)
    or the help text already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommand parsers (which argparse builds as the same class)
    all show defaults in their help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)


_MISSING = object()


def _module_tree(module: str) -> ast.Module:
    """The parsed source of `mechscope.<module>` (a file of this package), not imported."""
    path = Path(__file__).resolve().parent.parent.joinpath(*module.split(".")).with_suffix(".py")
    return ast.parse(path.read_text(encoding="utf-8"))


def _literal(node: ast.expr | None):
    try:
        return _MISSING if node is None else ast.literal_eval(node)
    except ValueError:
        return _MISSING


class ConfigDocs:
    """Defaults and per-field docstrings of the config dataclass `name` in `mechscope.<module>`,
    for --help: read from the module's source rather than imported (those modules load torch,
    and `mechscope sae train --help` should answer at once). A default that is not a literal
    is read from the imported class."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name
        found = [n for n in _module_tree(module).body if isinstance(n, ast.ClassDef) and n.name == name]
        body = found[0].body if found else []
        self.docs: dict[str, str] = {}
        self.defaults: dict[str, object] = {}
        for node, after in zip(body, [*body[1:], None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                self.defaults[node.target.id] = _literal(node.value)
                if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                    self.docs[node.target.id] = str(after.value.value).replace("%", "%%")

    def __getitem__(self, field: str) -> str:
        """The field's docstring (help text)."""
        return self.docs[field]

    def default(self, field: str):
        value = self.defaults.get(field, _MISSING)
        if value is _MISSING:
            import importlib

            value = getattr(getattr(importlib.import_module(f"mechscope.{self.module}"), self.name), field)
        return value


def constant(module: str, name: str):
    """A module-level literal of `mechscope.<module>` (e.g. a tuple of choices), read from its
    source; imported where it is not a literal."""
    for node in _module_tree(module).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value = _literal(node.value)
            if value is not _MISSING:
                return value
    import importlib

    return getattr(importlib.import_module(f"mechscope.{module}"), name)
