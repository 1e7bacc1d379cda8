"""`SearchResult`: the layer x strength table of a steering search, its Pareto front
(behaviour vs fluency), the recommended cell, and the two figures."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..plots import figure
from ..results import Saveable, pandas


@dataclass
class SearchResult(Saveable):
    """Scores of every (layer, strength) cell.

    `effect` is the behaviour shift in the strength's own direction (shift x sign), so a
    negative strength that lowers the behaviour counts as working. The recommended cell has
    the largest effect among cells with a positive effect and fluency cost <= max_fluency
    (ties: the lower cost); None when no cell qualifies.
    """

    KIND = "steering_search"

    model_name: str
    layers: list[int]
    sites: list[str]
    strengths: list[float]
    behaviour: Float[Tensor, "layer strength"]
    """Mean behaviour shift against the unsteered model."""
    fluency: Float[Tensor, "layer strength"]
    """Fluency cost (KL in nats, or NLL increase per token)."""
    anti_steerable: Float[Tensor, "layer strength"]
    """Share of held-out inputs moved opposite to the strength's sign (NaN at strength 0)."""
    metric: str
    fluency_metric: str
    max_fluency: float
    normalize: str
    heldout_pairs: int
    recommended: list | None = None
    """[layer, strength] of the recommended cell, or None."""

    @classmethod
    def build(cls, **fields) -> SearchResult:
        result = cls(**fields)
        result.recommended = result._recommend()
        return result

    @property
    def effect(self) -> Tensor:
        return self.behaviour * torch.tensor(self.strengths).sign()

    def _recommend(self) -> list | None:
        ok = (self.effect > 0) & (self.fluency <= self.max_fluency) & (torch.tensor(self.strengths) != 0)
        if not bool(ok.any()):
            return None
        score = torch.where(ok, self.effect, torch.tensor(float("-inf")))
        best = score.max()
        ties = (score == best).nonzero().tolist()
        li, si = min(ties, key=lambda cell: float(self.fluency[cell[0], cell[1]]))
        return [self.layers[li], self.strengths[si]]

    @property
    def pareto(self) -> Tensor:
        """[layer, strength] bool: cells no other cell beats on both effect and fluency."""
        e, f = self.effect.flatten(), self.fluency.flatten()
        live = torch.tensor(self.strengths).ne(0).repeat(len(self.layers))
        better = (e[None, :] >= e[:, None]) & (f[None, :] <= f[:, None])
        strict = (e[None, :] > e[:, None]) | (f[None, :] < f[:, None])
        dominated = (better & strict & live[None, :]).any(1)
        return (live & ~dominated).view(self.effect.shape)

    def cell(self, layer: int, strength: float) -> dict:
        li, si = self.layers.index(layer), self.strengths.index(strength)
        return {
            "layer": layer,
            "strength": strength,
            "behaviour": float(self.behaviour[li, si]),
            "fluency": float(self.fluency[li, si]),
            "anti_steerable": float(self.anti_steerable[li, si]),
            "pareto": bool(self.pareto[li, si]),
        }

    def rows(self) -> list[dict]:
        return [self.cell(layer, s) for layer in self.layers for s in self.strengths]

    def to_frame(self):
        return pandas().DataFrame(self.rows())

    def plot(self):
        """Heatmap of the behaviour shift per layer x strength (recommended cell boxed)."""
        fig, ax = figure(1.2 + 0.55 * len(self.strengths), 1.2 + 0.45 * len(self.layers))
        limit = float(self.behaviour.abs().max()) or 1.0
        image = ax.imshow(self.behaviour.numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(self.strengths)), [f"{s:g}" for s in self.strengths])
        ax.set_yticks(range(len(self.layers)), [str(layer) for layer in self.layers])
        ax.set_xlabel(f"strength ({self.normalize})")
        ax.set_ylabel("layer")
        ax.set_title(f"{self.metric} shift, {self.model_name}")
        if self.recommended is not None:
            li, si = self.layers.index(self.recommended[0]), self.strengths.index(self.recommended[1])
            ax.add_patch(_box(si, li))
        fig.colorbar(image, ax=ax)
        return fig

    def plot_pareto(self):
        """Effect vs fluency cost per cell, the Pareto front joined."""
        fig, ax = figure(6, 4)
        for li, layer in enumerate(self.layers):
            ax.scatter(self.fluency[li].numpy(), self.effect[li].numpy(), s=18, label=f"layer {layer}")
        front = self.pareto.flatten()
        points = sorted(zip(self.fluency.flatten()[front].tolist(), self.effect.flatten()[front].tolist()))
        if points:
            ax.plot(*zip(*points), color="black", linewidth=1, label="Pareto front")
        ax.axvline(self.max_fluency, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(f"fluency cost ({self.fluency_metric})")
        ax.set_ylabel(f"effect ({self.metric} shift x sign of strength)")
        ax.legend(fontsize=7)
        return fig


def _box(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2)
