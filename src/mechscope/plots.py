"""Figure helpers shared by the methods' `.plot()`: matplotlib figures that touch no
global pyplot state (safe in libraries, threads and servers)."""

from __future__ import annotations


def figure(width: float, height: float):
    """A matplotlib figure of `width` x `height` inches and its one Axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


WHITESPACE = {"\n": "⏎", " ": "·", "\t": "⇥", "\r": "␍"}
"""How `visible` draws whitespace: a newline as ⏎, a space as ·, a tab as ⇥, a carriage return as ␍."""


def visible(text: str, limit: int | None = None) -> str:
    """A token as a label or table cell can show it: whitespace drawn visibly (a newline
    would break the cell, a space vanish), cut to `limit` characters with an ellipsis."""
    shown = "".join(WHITESPACE.get(ch, ch) for ch in text)
    if limit is not None and len(shown) > limit:
        shown = shown[: limit - 1] + "…"
    return shown
