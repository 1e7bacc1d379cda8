"""Figures of weight forensics: the spectra of the updates, the key matches of a rank-one
update and the tokens it promotes."""

from __future__ import annotations

import numpy as np

from ._common import figure


def spectra_figure(rows: list[dict], tensors: dict, names: list[str], title: str, most: int = 8):
    """Singular values of the updates of (at most `most`) changed matrices, log scale, each
    with its noise floor dashed."""
    fig, axes = figure(6.5, 3.8)
    ax = axes[0][0]
    by_name = {r["name"]: r for r in rows}
    for i, name in enumerate(names[:most]):
        s = tensors[f"{name}.S"].numpy()
        s = np.maximum(s, np.finfo(np.float64).tiny)
        r = by_name[name]
        ax.semilogy(np.arange(1, len(s) + 1), s, marker="o", ms=3, color=f"C{i}", label=f"{name} (rank {r['rank']})")
        ax.axhline(r["noise_floor"], color=f"C{i}", ls="--", lw=0.8)
    ax.set_xlabel("index i")
    ax.set_ylabel("σ_i(ΔW)")
    title = title if len(title) <= 50 else "…" + title[-49:]
    ax.set_title(f"{title}: spectra of the updates (dashed: noise floor)", fontsize=9)
    if names:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no matrix changed", ha="center", va="center", transform=ax.transAxes)
    return fig


def _bars(ax, labels: list[str], values: list[float], color: str) -> None:
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color=color)
    ax.set_yticks(y)
    ax.set_yticklabels([repr(t)[1:-1] for t in labels], fontsize=7)


def key_figure(keys: list[dict], name: str):
    """The response |uᵀk| of the best-matching keys (top first)."""
    fig, axes = figure(5.5, 0.25 * len(keys) + 1.2)
    ax = axes[0][0]
    _bars(ax, [k["name"] for k in keys], [k["score"] for k in keys], "C0")
    ax.set_xlabel("response |uᵀk| (what the update adds, in units of σ v)")
    ax.set_title(f"{name}: which keys the update responds to", fontsize=9)
    return fig


def promoted_figure(reading: dict, name: str, top: int):
    """Tokens promoted through the later layers (left) and by the logit lens of v (right)."""
    fig, axes = figure(9, 0.25 * top + 1.2, 1, 2)
    for ax, key, label, color in (
        (axes[0][0], "promoted", "mean Δ log p (through later layers)", "C2"),
        (axes[0][1], "promoted_direct", "logit lens of v", "C1"),
    ):
        items = reading.get(key, [])[:top]
        _bars(ax, [t["token"] for t in items], [t["score"] for t in items], color)
        ax.set_xlabel(label)
    axes[0][0].set_title(f"{name}: what the update promotes", fontsize=9)
    return fig


def lora_figure(rows: list[dict], values: dict, title: str):
    """Rank usage per adapted module (left) and the singular values of each update (right)."""
    fig, axes = figure(11, 0.22 * len(rows) + 2.2, 1, 2)
    left, right = axes[0]
    y = np.arange(len(rows))[::-1]
    for i, (key, label) in enumerate(
        (
            ("r", "nominal r"),
            ("rank", "numerical rank"),
            ("rank_threshold", "rank by threshold"),
            ("intruders", "intruders"),
        )
    ):
        left.barh(y + (i - 1.5) * 0.2, [r[key] for r in rows], height=0.2, label=label, color=f"C{i}")
    left.set_yticks(y)
    left.set_yticklabels([r["name"] for r in rows], fontsize=6)
    left.legend(fontsize=7)
    left.set_title("rank usage per module", fontsize=9)
    for i, r in enumerate(rows[:10]):
        s = np.maximum(values[r["name"]].numpy(), np.finfo(np.float64).tiny)
        right.semilogy(np.arange(1, len(s) + 1), s, marker="o", ms=3, color=f"C{i % 10}", label=r["name"][-30:])
    right.set_xlabel("index i")
    right.set_ylabel("σ_i(scaling · B A)")
    right.set_title(title if len(title) <= 50 else "…" + title[-49:], fontsize=9)
    if rows:
        right.legend(fontsize=6)
    return fig
