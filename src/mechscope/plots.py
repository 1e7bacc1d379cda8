"""Figure helpers shared by the methods' `.plot()`: matplotlib figures that touch no
global pyplot state (safe in libraries, threads and servers)."""

from __future__ import annotations


def figure(width: float, height: float):
    """A matplotlib figure of `width` x `height` inches and its one Axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()
