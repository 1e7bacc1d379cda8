"""Measures of superposition in toy models (Elhage et al. 2022, "Toy Models of Superposition").

Every function takes weights ``W`` shaped ``[..., d_hidden, n_features]`` (feature ``i`` is
the column ``W[..., :, i]``, as in the paper's ``x' = ReLU(WᵀWx + b)``), so one call covers
all instances of a batched toy model.

- ``feature_norms``: ‖W_i‖, about 1 for a represented feature and 0 for an ignored one;
- ``represented``: ‖W_i‖ > threshold (0.5, as the paper reads its plots);
- ``interference``: Σ_{j≠i} (Ŵ_i·W_j)², how much other features project onto feature i's
  direction (0: feature i has a dimension of its own);
- ``feature_dimensionality``: D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)², the fraction of a dimension that
  feature i gets (1 dedicated, 1/2 antipodal pair, 2/5 pentagon, 0 not represented);
- ``dimensions_per_feature``: D* = d_hidden / ‖W‖²_F, the average of the above.

``two_in_one_phase`` classifies the 2-features-in-1-dimension models of the phase diagram.
The ``plot_*`` functions draw the paper's figures with matplotlib (no pyplot state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import Tensor

EPS = 1e-8
"""Norms below this count as zero (a feature the model ignores)."""

PHASES = ("neither represented", "feature 1 only", "feature 2 only", "superposition (antipodal)", "both, same side")
"""Labels of ``two_in_one_phase``'s codes 0..4."""

PHASE_COLOURS = ("#d9d9d9", "#4c72b0", "#dd8452", "#55a868", "#8172b2")


def feature_norms(W: Tensor) -> Tensor:
    """‖W_i‖ for every feature: ``[..., d_hidden, n] -> [..., n]``."""
    return W.norm(dim=-2)


def represented(W: Tensor, threshold: float = 0.5) -> Tensor:
    """Whether each feature is represented (‖W_i‖ > threshold): ``[..., n]`` bool."""
    return feature_norms(W) > threshold


def _overlaps(W: Tensor) -> Tensor:
    """(Ŵ_i·W_j)² for all i, j: ``[..., n, n]`` (row i: projections onto feature i's direction)."""
    unit = W / feature_norms(W).clamp_min(EPS).unsqueeze(-2)
    return (unit.transpose(-1, -2) @ W).square()


def interference(W: Tensor) -> Tensor:
    """Σ_{j≠i} (Ŵ_i·W_j)²: how much the other features load on feature i's direction, ``[..., n]``."""
    sq = _overlaps(W)
    return sq.sum(-1) - sq.diagonal(dim1=-2, dim2=-1)


def feature_dimensionality(W: Tensor) -> Tensor:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)², ``[..., n]``; 0 for a feature with (near) zero norm."""
    norms_sq = feature_norms(W).square()
    denom = _overlaps(W).sum(-1)
    return torch.where(norms_sq > EPS, norms_sq / denom.clamp_min(EPS), torch.zeros_like(norms_sq))


def dimensions_per_feature(W: Tensor) -> Tensor:
    """D* = d_hidden / ‖W‖²_F, ``[...]``: 1 when every dimension holds one feature, 1/2 for
    antipodal pairs, m/n when all n features share m dimensions with unit norm."""
    return W.shape[-2] / W.square().sum((-2, -1)).clamp_min(EPS)


@dataclass(frozen=True)
class FeatureGeometry:
    """All per-feature measures of a batch of toy models, from ``FeatureGeometry.of(W)``."""

    norms: Tensor
    """‖W_i‖, ``[instance, n]``."""
    interference: Tensor
    """Σ_{j≠i} (Ŵ_i·W_j)², ``[instance, n]``."""
    feature_dim: Tensor
    """Per-feature dimensionality D_i, ``[instance, n]``."""
    dim_star: Tensor
    """Dimensions per feature D* = m / ‖W‖²_F, ``[instance]``."""

    @classmethod
    def of(cls, W: Tensor) -> FeatureGeometry:
        W = W.detach().float()
        return cls(feature_norms(W), interference(W), feature_dimensionality(W), dimensions_per_feature(W))

    def n_represented(self, threshold: float = 0.5) -> Tensor:
        """How many features each instance represents, ``[instance]``."""
        return (self.norms > threshold).sum(-1)


def two_in_one_phase(W: Tensor, threshold: float = 0.5) -> Tensor:
    """Phase of each 2-features-in-1-dimension model, ``[..., 1, 2] -> [...]`` codes into PHASES:
    0 neither feature represented, 1 only feature 1, 2 only feature 2, 3 both on opposite sides
    of the one dimension (antipodal superposition), 4 both on the same side."""
    if W.shape[-2:] != (1, 2):
        raise ValueError(f"two_in_one_phase needs W shaped [..., 1, 2], got {tuple(W.shape)}")
    w1, w2 = W[..., 0, 0], W[..., 0, 1]
    on1, on2 = w1.abs() > threshold, w2.abs() > threshold
    both = torch.where(w1 * w2 < 0, 3, 4)
    return torch.where(on1 & on2, both, on1.long() + 2 * on2.long())


def plot_feature_columns(W: Tensor, titles: list[str], importance: Tensor | None = None) -> Figure:
    """The paper's 2D pictures: the columns W_i of each instance ``[instance, 2, n]`` drawn as
    spokes from the origin, coloured by importance (bright yellow: most important, purple: least)."""
    W = W.detach().float()
    if W.shape[-2] != 2:
        raise ValueError(f"plot_feature_columns draws 2-dimensional hidden spaces, got d_hidden={W.shape[-2]}")
    n_inst, n = W.shape[0], W.shape[-1]
    cols = min(n_inst, 4)
    rows = -(-n_inst // cols)
    fig = Figure(figsize=(2.4 * cols, 2.5 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes[n_inst:]:
        ax.set_axis_off()
    imp = importance if importance is not None else torch.ones(n_inst, n)
    cmap = colormaps["viridis"]
    for k, ax in enumerate(axes[:n_inst]):
        span = imp[k].max() - imp[k].min()
        scale = (imp[k] - imp[k].min()) / span if span > EPS else torch.ones(n)
        for i in range(n):
            x, y = W[k, 0, i].item(), W[k, 1, i].item()
            colour = cmap(float(scale[i]))
            ax.plot([0, x], [0, y], color=colour, lw=2)
            ax.scatter([x], [y], color=colour, s=18, zorder=3)
        ax.set_xlim(-1.5, 1.5), ax.set_ylim(-1.5, 1.5), ax.set_aspect("equal")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(titles[k], fontsize=9)
    fig.suptitle("columns W_i of W (colour: importance, yellow = most important, purple = least)", fontsize=10)
    return fig


def plot_phase_diagram(phases: Tensor, importance: Tensor, density: Tensor) -> Figure:
    """Coloured grid of ``two_in_one_phase`` codes ``[n_density, n_importance]`` against the
    relative importance of feature 2 (x, log) and feature density 1 - S (y, log)."""
    fig = Figure(figsize=(6.4, 4.6), layout="constrained")
    ax = fig.subplots()
    cmap = ListedColormap(PHASE_COLOURS)
    ax.pcolormesh(
        _edges(importance),
        _edges(density),
        phases.numpy(),
        cmap=cmap,
        vmin=-0.5,
        vmax=len(PHASES) - 0.5,
        shading="flat",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("relative importance of feature 2"), ax.set_ylabel("feature density 1 - S")
    ax.set_title("2 features in 1 dimension (n=2, m=1): trained models", fontsize=10)
    present = sorted(set(phases.flatten().tolist()))
    handles = [ax.scatter([], [], marker="s", s=60, color=PHASE_COLOURS[c]) for c in present]
    ax.legend(
        handles, [PHASES[c] for c in present], loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False
    )
    return fig


def _edges(centres: Tensor) -> list[float]:
    """Cell edges (geometric midpoints) for log-spaced cell centres."""
    c = [float(v) for v in centres]
    mids = [math.sqrt(a * b) for a, b in zip(c, c[1:])]
    return [c[0] ** 2 / mids[0], *mids, c[-1] ** 2 / mids[-1]]


def plot_dimensionality(geometry: FeatureGeometry, density: Tensor) -> Figure:
    """D* (line) and every feature's D_i (dots) against 1/(1 - S), with the paper's reference
    fractions (1, 3/4, 2/3, 1/2, 2/5, 3/8, 1/3) as horizontal lines."""
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    inv = (1.0 / density.double()).numpy()
    for frac in (1, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8, 1 / 3):
        ax.axhline(frac, color="0.85", lw=0.8, zorder=0)
        ax.text(inv.max() * 1.08, frac, f"{frac:.3g}", va="center", fontsize=7, color="0.5")
    dims = geometry.feature_dim
    xs = torch.from_numpy(inv).unsqueeze(-1).expand_as(dims)
    ax.scatter(
        xs.flatten().numpy(),
        dims.flatten().numpy(),
        s=3,
        alpha=0.25,
        color="#4c72b0",
        label="per-feature dimensionality D_i",
    )
    ax.plot(
        inv,
        geometry.dim_star.numpy(),
        color="k",
        lw=1.6,
        marker="o",
        ms=3,
        label="dimensions per feature D* = m / ||W||_F^2",
    )
    ax.set_xscale("log")
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("1 / (1 - S)  (inverse feature density)"), ax.set_ylabel("dimensions per feature")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Dimensions per feature across sparsity (plateaus at the fractions)", fontsize=10)
    return fig


def longest_plateau(values: Tensor, level: float, tol: float) -> tuple[int, int]:
    """``(start, stop)`` of the longest run of consecutive ``values`` within ``tol`` of ``level``
    (``stop`` exclusive; ``(0, 0)`` when none is)."""
    best, start = (0, 0), None
    flags = ((values - level).abs() < tol).tolist() + [False]
    for k, inside in enumerate(flags):
        if inside and start is None:
            start = k
        elif not inside and start is not None:
            best, start = max(best, (start, k), key=lambda s: s[1] - s[0]), None
    return best
