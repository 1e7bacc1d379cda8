"""`PatchResult`: the scores of a patching sweep (exact or attribution-estimated), saved
as a folder (cfg.json + tensors.safetensors), drawn as a heatmap."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import MechscopeError
from ..plots import figure
from ..results import Saveable, pandas


@dataclass
class PatchResult(Saveable):
    """One score per patch of a sweep, laid out on named axes (e.g. layer x pos)."""

    KIND = "patch_result"

    model_name: str
    sweep: str
    """resid, attn, mlp, heads or heads-pos."""
    direction: str
    """denoise (clean values into the corrupted run) or noise (corrupted values into the clean run)."""
    method: str
    """exact (one patched forward per patch) or attribution (first-order estimate)."""
    metric_name: str
    axes: list[str]
    """Names of the axes of `scores`: layer, head, pos."""
    scores: Float[Tensor, "..."]
    """Normalised effect: denoise (m - m_corrupt) / (m_clean - m_corrupt), so 0 = no effect and
    1 = restores the clean metric; noise (m - m_clean) / (m_corrupt - m_clean), so 0 = no
    effect and 1 = as bad as the corrupted run. Raw differences when `normalized` is False."""
    patched: Float[Tensor, "..."]
    """The metric of each patched run (estimated by attribution: base + first-order change)."""
    clean_metric: float
    corrupt_metric: float
    normalized: bool = True
    """False when clean and corrupted metrics coincide: scores are then m - m_base."""
    positions: list[int] = field(default_factory=list)
    """The absolute position of each index of the pos axis (if any)."""
    pos_labels: list[str] = field(default_factory=list)
    """The clean tokens of the first prompt at those positions (for plot labels)."""

    @property
    def site(self) -> str:
        return {
            "resid": "blocks.{l}.hook_resid_pre",
            "attn": "blocks.{l}.hook_attn_out",
            "mlp": "blocks.{l}.hook_mlp_out",
        }.get(self.sweep, "blocks.{l}.attn.hook_z")

    def top(self, k: int = 10) -> list[tuple[dict[str, int], float]]:
        """The k patches with the largest |score|: ({axis: index (pos: absolute)}, score)."""
        if k < 0:
            raise MechscopeError(f"k must be 0 or more (how many patches to list), got {k}")
        flat = self.scores.flatten()
        order = flat.abs().argsort(descending=True)[:k]
        out = []
        for i in order.tolist():
            index = dict(zip(self.axes, torch.unravel_index(torch.tensor(i), self.scores.shape)))
            where = {a: (self.positions[int(v)] if a == "pos" and self.positions else int(v)) for a, v in index.items()}
            out.append((where, float(flat[i])))
        return out

    def describe(self, where: dict[str, int]) -> str:
        parts = [f"L{where['layer']}"] + ([f"H{where['head']}"] if "head" in where else [])
        if "pos" in where:
            p = where["pos"]
            label = self.pos_labels[self.positions.index(p)] if p in self.positions and self.pos_labels else ""
            parts.append(f"pos {p}" + (f" {label!r}" if label else ""))
        return " ".join(parts)

    def plot(self, ax=None, title: str | None = None):
        """Heatmap (diverging, centred on 0): layer x pos, layer x head, or (layer, head) x pos."""
        grid = self.scores.float()
        rows = [f"L{layer}" for layer in range(grid.shape[0])]
        if grid.dim() == 3:
            rows = [f"L{layer}H{head}" for layer in range(grid.shape[0]) for head in range(grid.shape[1])]
            grid = grid.flatten(0, 1)
        columns = self.pos_labels if self.axes[-1] == "pos" else [f"H{h}" for h in range(grid.shape[1])]
        columns = [c if len(c) <= 10 else c[:9] + "…" for c in columns]
        fig, ax = (
            figure(max(4.0, 0.4 * grid.shape[1] + 2.0), max(2.2, 0.28 * grid.shape[0] + 1.4))
            if ax is None
            else (ax.figure, ax)
        )
        limit = float(grid.abs().max()) or 1.0
        image = ax.imshow(grid.numpy(), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_xticks(range(len(columns)), columns, rotation=90 if self.axes[-1] == "pos" else 0, fontsize=7)
        ax.set_xlabel("position: token" if self.axes[-1] == "pos" else "head")
        ax.set_ylabel("layer, head" if self.scores.dim() == 3 else "layer")
        what = "normalised effect" if self.normalized else f"change in {self.metric_name}"
        fig.colorbar(image, ax=ax, label=what, shrink=0.8)
        ax.set_title(
            title or f"{self.model_name}: {self.method} {self.direction} patching of {self.site} ({self.metric_name})",
            fontsize=9,
        )
        return fig

    def to_frame(self):
        pd = pandas()
        rows = []
        for i, value in enumerate(self.scores.flatten().tolist()):
            index = torch.unravel_index(torch.tensor(i), self.scores.shape)
            row = {a: int(v) for a, v in zip(self.axes, index)}
            if "pos" in row and self.positions:
                row["pos"] = self.positions[row["pos"]]
            rows.append({**row, "score": value, "patched": float(self.patched.flatten()[i])})
        return pd.DataFrame(rows)


def normalise(values: Tensor, clean: float, corrupt: float, direction: str) -> tuple[Tensor, bool]:
    """Normalised scores (see `PatchResult.scores`) and whether they could be normalised."""
    base, target = (corrupt, clean) if direction == "denoise" else (clean, corrupt)
    span = target - base
    if abs(span) < 1e-12:
        return values - base, False
    return (values - base) / span, True
