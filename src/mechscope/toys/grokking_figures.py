"""Figures of the grokking progress measures (`grokking.py`): the paper's four panels over
training with its three phases shaded, W_E in the Fourier basis, and the loss history."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .grokking import (
    ModelLike,
    _frequency_rows,
    _model,
    _modulus,
    embedding_fourier_norms,
    fourier_labels,
    key_frequencies,
)

if TYPE_CHECKING:
    from .grokking import GrokkingCurves

PHASE_COLOURS = {"memorisation": "#f4cccc", "circuit formation": "#fff2cc", "cleanup": "#d9ead3"}


def _shade(ax, curves: GrokkingCurves, label: bool) -> None:
    for name, (a, b) in curves.phase_spans().items():
        if b > a:
            ax.axvspan(a, b, color=PHASE_COLOURS[name], alpha=0.8, lw=0, label=name if label else None)


def plot_curves(curves: GrokkingCurves):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True).flatten()
    s = curves.steps.numpy()
    panels = [
        ("train and test loss", [("train", curves.train_loss, "C0"), ("test", curves.test_loss, "C1")], "nats"),
        (
            "restricted and excluded loss (train pairs)",
            [
                ("train", curves.train_loss, "C0"),
                ("restricted", curves.restricted_loss, "C2"),
                ("excluded", curves.excluded_loss, "C3"),
                ("test", curves.test_loss, "C1"),
            ],
            "nats",
        ),
        (
            "Gini coefficient of Fourier norms",
            [("W_E", curves.gini_embed, "C4"), ("W_L = W_out W_U", curves.gini_neuron, "C5")],
            "",
        ),
        ("total sum of squared weights", [("weights", curves.sum_squared_weights, "C7")], ""),
    ]
    for ax, (title, lines, unit) in zip(axes, panels):
        log = unit == "nats"  # the losses span orders of magnitude
        _shade(ax, curves, label=ax is axes[0])
        for label, values, colour in lines:
            ax.plot(
                s,
                values.numpy(),
                marker=".",
                color=colour,
                label=label,
                alpha=0.35 if log and label in ("train", "test") and len(lines) > 2 else 1.0,
            )
        ax.set_yscale("log" if log else "linear")
        ax.set_title(title)
        ax.set_ylabel(f"{title.split(' (')[0]}" + (f" ({unit}, log scale)" if unit else ""), fontsize=8)
        ax.legend(fontsize=8)
    for ax in axes[2:]:
        ax.set_xlabel("step")
    freqs = ", ".join(str(int(k)) for k in curves.key_freqs)
    fig.suptitle(f"Grokking progress measures (key frequencies {freqs})")
    return fig


def plot_embedding_fourier(model: ModelLike, p: int | None = None, freqs: list[int] | None = None):
    """Bar plot of W_E's norm along each Fourier basis vector, key frequencies highlighted."""
    from matplotlib.figure import Figure

    m = _model(model)
    p = _modulus(m, p)
    norms = embedding_fourier_norms(m, p)
    key = set(_frequency_rows(freqs if freqs is not None else key_frequencies(m, p), p))
    fig = Figure(figsize=(14, 4), layout="constrained")
    ax = fig.subplots()
    colours = ["C3" if j in key else "C0" for j in range(p)]
    ax.bar(range(p), norms.numpy(), color=colours)
    labels = fourier_labels(p)
    ticks = [0] + sorted(key)
    ax.set_xticks(ticks, [labels[j] for j in ticks], rotation=90, fontsize=8)
    ax.set_ylabel("norm of W_E along the basis vector")
    ax.set_xlabel("Fourier basis vector over Z_p (the key frequencies and the constant are named)")
    ax.set_title("Embedding in the Fourier basis over Z_p (key frequencies in red)")
    return fig


def plot_history(history: list[list[float]], columns: list[str]):
    """Train/test loss (log scale) and test accuracy against step, from a training history."""
    from matplotlib.figure import Figure

    table = torch.tensor(history, dtype=torch.float64)
    col = {name: table[:, i].numpy() for i, name in enumerate(columns)}
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(col["step"], col["train_loss"], label="train loss")
    ax.plot(col["step"], col["test_loss"], label="test loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    acc = ax.twinx()
    acc.plot(col["step"], col["test_accuracy"], color="C2", ls="--", label="test accuracy")
    acc.set_ylim(0, 1.02)
    acc.set_ylabel("test accuracy")
    handles = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center right", fontsize=8)
    ax.set_title("Training history")
    return fig
