"""What a figure in the report must have to be read without its caption: a title, a label
on every axis that shows tick labels (units in it where there are units), a label on every
colour bar, a legend where several named series share a panel, and no empty panel.

`problems(fig)` lists what a drawn figure lacks. `checking()` checks every figure saved
while it is open (the report's own and the zoo's, all of them pass through
`Figure.savefig`), so a test sees exactly what a report embeds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def _title(fig) -> str:
    titles = [fig._suptitle.get_text()] if getattr(fig, "_suptitle", None) is not None else []
    for ax in fig.axes:
        titles += [ax.get_title(loc) for loc in ("center", "left", "right")]
    return next((t for t in titles if t.strip()), "")


def _labels(axis) -> list:
    return [t for t in axis.get_ticklabels() if t.get_visible() and t.get_text()] if axis.get_visible() else []


def _shows_tick_labels(axis) -> bool:
    return any(t.get_text().strip() for t in _labels(axis))


def _tick_problems(axis, letter: str, name: str, renderer) -> list[str]:
    """Tick labels that overlap their neighbour, or that hold raw or only whitespace (a
    newline token drawn as a line break, a space token as nothing)."""
    labels = _labels(axis)
    found = [
        f"{name}: {letter} tick label {t.get_text()!r} is whitespace a reader cannot see"
        for t in labels
        if "\n" in t.get_text() or not t.get_text().strip()
    ]
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0 if letter == "x" else b.y0)
    for a, b in zip(boxes, boxes[1:]):
        width = min(a.x1, b.x1) - max(a.x0, b.x0)
        height = min(a.y1, b.y1) - max(a.y0, b.y0)
        if width > 1 and height > 1:  # pixels: touching is fine, covering is not
            found.append(f"{name}: {letter} tick labels overlap")
            break
    return found


def _colorbar_problems(ax, name: str) -> list[str]:
    bar = ax._colorbar
    axis = ax.yaxis if bar.orientation == "vertical" else ax.xaxis
    return [] if axis.get_label_text().strip() else [f"{name}: colour bar without a label"]


def _legend_texts(fig) -> set[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes)]
    return {t.get_text() for legend in legends if legend is not None for t in legend.get_texts()}


def _axes_problems(ax, name: str, renderer) -> list[str]:
    if getattr(ax, "_colorbar", None) is not None:
        return _colorbar_problems(ax, name)
    if not ax.get_visible():
        return []
    found = []
    if not ax.has_data():
        found.append(f"{name}: empty panel (nothing drawn)")
    if ax.axison:
        for letter, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if _shows_tick_labels(axis) and not axis.get_label_text().strip():
                found.append(f"{name}: {letter} axis has tick labels but no label")
            found += _tick_problems(axis, letter, name, renderer)
    labels = [label for label in ax.get_legend_handles_labels()[1] if label.strip()]
    missing = set(labels) - _legend_texts(ax.figure)
    if len(labels) > 1 and missing:  # a twin's series may sit in its partner's legend
        found.append(f"{name}: {len(labels)} named series, {len(missing)} in no legend")
    return found


def problems(fig) -> list[str]:
    """What the drawn `fig` lacks (see the module docstring); [] when nothing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)  # tick labels and their extents exist only once drawn
    title = _title(fig)
    found = [] if title else ["figure has no title"]
    for i, ax in enumerate(fig.axes):
        found += _axes_problems(ax, f"{title or 'figure'!r} panel {i}", renderer)
    return found


def describe(fig) -> str:
    """A figure's title and axis labels in one line: the alt text of its image."""
    parts = [_title(fig) or "figure"]
    for ax in fig.axes:
        if getattr(ax, "_colorbar", None) is None:
            parts += [f"{k}: {v}" for k, v in (("x", ax.get_xlabel()), ("y", ax.get_ylabel())) if v]
    return "; ".join(dict.fromkeys(parts))


@contextlib.contextmanager
def checking() -> Iterator[list[tuple[str, list[str], Any]]]:
    """Within the block, every figure saved is checked after it is drawn; yields the list
    of (title, problems, figure) it fills, one entry per figure."""
    from matplotlib.figure import Figure

    seen: list[tuple[str, list[str], Any]] = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append((_title(self), problems(self), self))
        return out

    Figure.savefig = savefig  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        Figure.savefig = original  # type: ignore[method-assign]
