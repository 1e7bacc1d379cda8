"""How good a probability of "right" is: AUROC (ranking), Brier score (squared error) and
expected calibration error (15 equal-width bins), and the reliability diagram behind ECE.

Conventions follow torchmetrics' binary metrics: a probability p falls in bin i when
edges[i] <= p < edges[i + 1] (edges = linspace(0, 1, 16)); ECE = sum over bins of
(bin share) * |accuracy - mean confidence|. p = 1 goes in the last bin.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import MechscopeError

N_BINS = 15


def _check(p: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    p, y = torch.as_tensor(p).double().flatten(), torch.as_tensor(y).flatten()
    if len(p) != len(y) or len(p) == 0:
        raise MechscopeError(f"{len(p)} probabilities for {len(y)} outcomes: give one probability per outcome")
    if not bool(torch.isfinite(p).all()) or bool(((p < 0) | (p > 1)).any()):
        raise MechscopeError("probabilities must be finite numbers in [0, 1]")
    if bool(((y != 0) & (y != 1)).any()):
        raise MechscopeError("outcomes must be 0 or 1 (or False/True)")
    return p, y.double()


def auroc(scores: Tensor, y: Tensor) -> float:
    """Area under the ROC curve: the chance that a random positive outranks a random
    negative (ties count one half); any real-valued score, not only probabilities."""
    s, t = torch.as_tensor(scores).double().flatten(), torch.as_tensor(y).double().flatten()
    if len(s) != len(t):
        raise MechscopeError(f"{len(s)} scores for {len(t)} outcomes: give one score per outcome")
    pos, neg = float(t.sum()), float(len(t) - t.sum())
    if pos == 0 or neg == 0:
        raise MechscopeError("AUROC needs both outcomes (some right, some wrong) among the examples")
    # Mann-Whitney U with average ranks for ties
    order = s.argsort()
    sorted_s = s[order]
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    _, inverse, counts = sorted_s.unique_consecutive(return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    return float((ranks[t == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def brier(p: Tensor, y: Tensor) -> float:
    """Mean squared difference between the probability and the outcome (0 or 1)."""
    p, t = _check(p, y)
    return float(((p - t) ** 2).mean())


@dataclass
class Reliability:
    """Per equal-width bin: how many examples, their mean probability and how often right."""

    edges: Float[Tensor, " edge"]
    count: Float[Tensor, " bin"]
    confidence: Float[Tensor, " bin"]
    """Mean predicted probability in the bin (0 where empty)."""
    accuracy: Float[Tensor, " bin"]
    """Share of outcomes that are 1 in the bin (0 where empty)."""

    @property
    def ece(self) -> float:
        share = self.count / self.count.sum()
        return float((share * (self.accuracy - self.confidence).abs()).sum())

    def plot(self, ax=None, label: str = "probe"):
        """The reliability diagram: accuracy per bin against the diagonal, counts below."""
        from ..plots import figure

        fig = None
        if ax is None:
            fig, ax = figure(4.5, 4.2)
        edges, count = self.edges.numpy(), self.count.numpy()
        acc, conf = self.accuracy.numpy(), self.confidence.numpy()
        centres = (edges[:-1] + edges[1:]) / 2
        filled = count > 0
        width = float(edges[1] - edges[0])
        ax.bar(centres[filled], acc[filled], width=width * 0.9, alpha=0.6, label=f"{label} (accuracy)")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.plot(conf[filled], acc[filled], "o-", ms=3, label=f"{label}: ECE {self.ece:.3f}")
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("observed frequency")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        return fig if fig is not None else ax.figure


def reliability(p: Tensor, y: Tensor, n_bins: int = N_BINS) -> Reliability:
    """Bin the probabilities into `n_bins` equal-width bins (see the module docstring)."""
    if n_bins < 1:
        raise MechscopeError(f"n_bins must be at least 1, got {n_bins}")
    p, t = _check(p, y)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    index = (torch.bucketize(p, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, index, torch.ones_like(p))
    conf = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, index, p)
    hits = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, index, t)
    safe = count.clamp_min(1)
    return Reliability(edges, count, conf / safe, hits / safe)


def ece(p: Tensor, y: Tensor, n_bins: int = N_BINS) -> float:
    """Expected calibration error over `n_bins` equal-width bins (L1)."""
    return reliability(p, y, n_bins).ece
