"""Figures of attribution maps: overlays on the input, a grid of methods side by side, the
randomisation cascade, and deletion/insertion curves. Matplotlib `Figure`s without pyplot."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor


def _image(x: Tensor) -> np.ndarray:
    """One input [C, H, W] as something imshow draws (grey, or RGB scaled to 0..1)."""
    x = x.detach().float().cpu()
    if x.shape[0] == 3:
        x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)
        return x.permute(1, 2, 0).numpy()
    return x.mean(0).numpy()


def _draw(ax, image: Tensor, heat: Tensor, signed: bool, alpha: float = 0.55) -> None:
    ax.imshow(_image(image), cmap="gray")
    heat = heat.detach().float().cpu()
    if signed:
        lim = float(heat.abs().max()) or 1.0
        ax.imshow(heat.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=alpha)
    else:
        ax.imshow(heat.numpy(), cmap="jet", vmin=0, vmax=float(heat.max()) or 1.0, alpha=alpha)
    ax.set_xticks([]), ax.set_yticks([])


def overlay_figure(result, index: int | None = None, columns: int = 8) -> Figure:
    """Each input with its map laid over it (red +, blue - for signed maps)."""
    picked = range(len(result.maps)) if index is None else [index]
    n = len(picked)
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(1.6 * cols + 0.4, 1.7 * rows + 0.5), layout="constrained")
    for ax, i in zip(fig.subplots(rows, cols, squeeze=False).flat, picked):
        _draw(ax, result.inputs[i], result.maps[i], result.signed)
        ax.set_title(f"#{i} class {int(result.target[i])}", fontsize=8)
    for ax in list(fig.axes)[n:]:
        ax.set_axis_off()
    fig.suptitle(f"{result.method} on {result.model_name}", fontsize=10)
    return fig


def token_figure(result) -> Figure:
    """A language model's per-token attribution as bars under the tokens."""
    scores = result.maps[0].numpy()
    fig = Figure(figsize=(max(4.0, 0.5 * len(scores) + 1), 2.6), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(scores)), scores, color=["tab:red" if s > 0 else "tab:blue" for s in scores])
    ax.set_xticks(range(len(scores)), [repr(t)[1:-1] for t in result.tokens], rotation=60, fontsize=7)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_ylabel("IG attribution")
    ax.set_title(f"IG over hook_embed on {result.model_name}, target token {int(result.target[0])}", fontsize=9)
    return fig


def method_grid(results: Sequence, columns: int | None = None) -> Figure:
    """Rows: inputs; columns: the input, then one map per method (same inputs in each result)."""
    n = len(results[0].maps) if columns is None else min(columns, len(results[0].maps))
    fig = Figure(figsize=(1.6 * (len(results) + 1), 1.6 * n + 0.4), layout="constrained")
    axes = fig.subplots(n, len(results) + 1, squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(_image(results[0].inputs[i]), cmap="gray")
        axes[i, 0].set_xticks([]), axes[i, 0].set_yticks([])
        axes[i, 0].set_ylabel(f"#{i} class {int(results[0].target[i])}", fontsize=8)
        for j, r in enumerate(results, 1):
            _draw(axes[i, j], r.inputs[i], r.maps[i], r.signed)
            if i == 0:
                axes[i, j].set_title(r.method, fontsize=8)
    return fig


def cascade_figure(report, inputs: int = 3) -> Figure:
    """Top: maps of the first inputs as layers are randomised from the top down; bottom:
    Spearman rank correlation with the original map per stage (mean and per input)."""
    stages = ["original", *report.stages]
    n = min(inputs, report.cascade_maps.shape[1])
    fig = Figure(figsize=(1.3 * len(stages) + 0.6, 1.3 * n + 2.8), layout="constrained")
    top, bottom = np.asarray(fig.subfigures(2, 1, height_ratios=[1.3 * n, 2.6])).ravel()
    axes = top.subplots(n, len(stages), squeeze=False)
    for i in range(n):
        for s, name in enumerate(stages):
            _draw(axes[i, s], report.inputs[i], report.cascade_maps[s, i], report.signed, alpha=0.7)
            if i == 0:
                axes[i, s].set_title(name, fontsize=7, rotation=30)
    ax = bottom.subplots()
    rho = report.spearman.numpy()
    ax.plot(range(1, len(stages)), rho, color="grey", alpha=0.3, lw=0.8)
    ax.plot(range(1, len(stages)), rho.mean(1), "o-", color="tab:red", label="mean")
    ax.axhline(report.threshold, ls="--", color="black", lw=0.8, label=f"pass below {report.threshold}")
    ax.set_xticks(range(1, len(stages)), report.stages, rotation=30, fontsize=7)
    ax.set_ylabel("Spearman vs original")
    ax.set_ylim(-1.05, 1.05)
    ax.legend(fontsize=7)
    top.suptitle(f"cascading randomisation of {report.method} ({'PASS' if report.ok('randomisation') else 'FAIL'})")
    return fig


def curves_figure(report) -> Figure:
    """Deletion and insertion curves (mean over inputs) against random pixel order."""
    fig = Figure(figsize=(8, 3.2), layout="constrained")
    for ax, kind in zip(fig.subplots(1, 2), ("deletion", "insertion")):
        curve, random = getattr(report, f"{kind}_curve"), getattr(report, f"{kind}_random")
        x = np.linspace(0, 1, curve.shape[1])
        auc, auc_random = float(curve.mean(0).mean()), float(random.mean(0).mean())
        ax.plot(x, curve.mean(0).numpy(), color="tab:red", label=f"{report.method} (AUC {auc:.3f})")
        ax.plot(x, random.mean(0).numpy(), color="grey", ls="--", label=f"random order (AUC {auc_random:.3f})")
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
        ax.set_ylabel("target probability")
        ax.set_title(f"{kind} ({'PASS' if report.ok(kind) else 'FAIL'})", fontsize=9)
        ax.legend(fontsize=7)
    return fig
