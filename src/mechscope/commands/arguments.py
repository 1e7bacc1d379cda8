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
