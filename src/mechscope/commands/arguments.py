"""argparse types the commands share: they reject a bad value at parse time, before any work."""

from __future__ import annotations

import argparse


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

    def _get_help_string(self, action: argparse.Action) -> str:
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
