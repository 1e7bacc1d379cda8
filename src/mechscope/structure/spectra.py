"""Weight spectra: singular values of every weight matrix and every head's circuits.

Per layer: W_Q, W_K, W_V, W_O whole ([d_model, heads·d_head] / [heads·d_head, d_model])
and per head (K and V per key/value head), W_in, W_gate (gated MLPs), W_out; then W_E
and W_U. Per head h: the OV circuit W_V[kv(h)] @ W_O[h] and the QK circuit
W_Q[h] @ W_K[kv(h)]ᵀ, both [d_model, d_model] of rank <= d_head, where
kv(h) = h // (n_heads // n_kv_heads) under grouped-query attention. Circuits are never
multiplied out: for A @ B with A [m, r] and B [r, n], QR gives A = Qa Ra and Bᵀ = Qb Rb,
so A @ B = Qa (Ra Rbᵀ) Qbᵀ and its singular values are those of the r x r core.

Statistics of singular values σ (all from the energies σ², so they agree with the
Frobenius norm ‖W‖_F² = Σσ²):
- spectral entropy H = -Σ p_i log p_i with p_i = σ_i² / Σσ² (nats): 0 for rank 1,
  log d for a d x d identity (any normalisation of σ gives those two; σ² is the energy);
- effective rank exp(H) (Roy & Vetterli 2007 define it with p_i = σ_i / Σσ instead);
- stable rank ‖W‖_F² / ‖W‖_2² = Σσ² / σ_1²;
- top-k share Σ_{i<k} σ_i² / Σσ², the part of the energy in the k largest directions.
A zero matrix has effective and stable rank 0 and undefined entropy (NaN).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor

from ..errors import MechscopeError
from ..io import write_tensors
from ._common import figure, frame, load_json, save_json
from .scree import Scree

log = logging.getLogger(__name__)
KINDS = ("W_Q", "W_K", "W_V", "W_O", "OV", "QK", "W_in", "W_gate", "W_out", "W_E", "W_U")
STATS = ("sigma_max", "frobenius", "entropy", "effective_rank", "stable_rank", "top_k_share")


# Statistics of a spectrum


def _energy(s) -> Tensor:
    s = torch.as_tensor(s, dtype=torch.float64)
    return s * s


def spectral_entropy(s) -> float:
    """Entropy (nats) of p_i = σ_i² / Σσ²; NaN for a zero matrix."""
    e = _energy(s)
    total = e.sum()
    if total <= 0:
        return math.nan
    p = e[e > 0] / total
    return float(-(p * p.log()).sum())


def effective_rank(s) -> float:
    """exp(spectral entropy); 0 for a zero matrix."""
    h = spectral_entropy(s)
    return 0.0 if math.isnan(h) else math.exp(h)


def stable_rank(s) -> float:
    """‖W‖_F² / ‖W‖_2²; 0 for a zero matrix."""
    e = _energy(s)
    return float(e.sum() / e.max()) if len(e) and e.max() > 0 else 0.0


def top_k_share(s, k: int) -> float:
    """Share of Σσ² in the k largest singular values; NaN for a zero matrix."""
    e = _energy(s).sort(descending=True).values
    return float(e[:k].sum() / e.sum()) if e.sum() > 0 else math.nan


def spectrum_stats(s, top_k: int = 8) -> dict[str, float]:
    s = torch.as_tensor(s, dtype=torch.float64)
    return {
        "sigma_max": float(s.max()) if len(s) else 0.0,
        "frobenius": float(_energy(s).sum().sqrt()),
        "entropy": spectral_entropy(s),
        "effective_rank": effective_rank(s),
        "stable_rank": stable_rank(s),
        "top_k_share": top_k_share(s, top_k),
    }


# Singular values of a product through its factors


def factored_svd(a: Float[Tensor, "m r"], b: Float[Tensor, "r n"]) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD (U, S, Vh) of a @ b, a [m, r], b [r, n], without forming the m x n product."""
    qa, ra = torch.linalg.qr(a)
    qb, rb = torch.linalg.qr(b.T)
    u, s, vh = torch.linalg.svd(ra @ rb.T, full_matrices=False)
    return qa @ u, s, vh @ qb.T


def singular_values(factors: Sequence[Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
    """Singular values of one matrix, or of the product of two factors (in float64)."""
    if len(factors) == 1:
        return torch.linalg.svdvals(factors[0].detach().to(dtype)).double()
    a, b = (f.detach().double() for f in factors)
    return factored_svd(a, b)[1]


# The model's matrices


@dataclass(frozen=True)
class Matrix:
    """One weight matrix (`factors` = (W,)) or circuit (`factors` = (A, B), meaning A @ B)."""

    name: str
    kind: str
    layer: int | None
    head: int | None
    factors: tuple[Tensor, ...]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.factors[0].shape[0], self.factors[-1].shape[-1])


def check_model(model) -> None:
    if getattr(model, "dims", None) is None or not hasattr(model, "W_Q"):
        raise MechscopeError(
            f"{getattr(model, 'name', model)} is not a transformer with attention weights; "
            "weight spectra need a Model (load a transformer)"
        )


def _attention(model, layer: int, kinds: set[str], per_head: bool) -> Iterator[Matrix]:
    d = model.dims
    group = d.n_heads // d.n_kv_heads
    q, k, v, o = model.W_Q(layer), model.W_K(layer), model.W_V(layer), model.W_O(layer)
    base = f"blocks.{layer}.attn"
    for kind, w in (("W_Q", q), ("W_K", k), ("W_V", v)):
        if kind in kinds:
            yield Matrix(f"{base}.{kind}", kind, layer, None, (w.permute(1, 0, 2).reshape(d.d_model, -1),))
            for h in range(len(w)) if per_head else ():
                yield Matrix(f"{base}.{kind}.{h}", kind, layer, h, (w[h],))
    if "W_O" in kinds:
        yield Matrix(f"{base}.W_O", "W_O", layer, None, (o.reshape(-1, d.d_model),))
        for h in range(d.n_heads) if per_head else ():
            yield Matrix(f"{base}.W_O.{h}", "W_O", layer, h, (o[h],))
    for h in range(d.n_heads):
        if "OV" in kinds:
            yield Matrix(f"{base}.OV.{h}", "OV", layer, h, (v[h // group], o[h]))
        if "QK" in kinds:
            yield Matrix(f"{base}.QK.{h}", "QK", layer, h, (q[h], k[h // group].T))


def weight_matrices(model, kinds: Sequence[str] | None = None, *, per_head: bool = True) -> Iterator[Matrix]:
    """Every matrix of `kinds` (default: all of `KINDS`), layer by layer, then W_E, W_U."""
    check_model(model)
    wanted = set(KINDS if kinds is None else kinds)
    unknown = wanted - set(KINDS)
    if unknown:
        raise MechscopeError(f"unknown weight kind(s) {', '.join(sorted(unknown))}: choose from {', '.join(KINDS)}")
    for layer in range(model.dims.n_layers):
        yield from _attention(model, layer, wanted, per_head)
        if model.dims.d_mlp:
            gate = model.W_gate(layer)
            for kind, get in (("W_in", model.W_in), ("W_gate", lambda _: gate), ("W_out", model.W_out)):
                w = get(layer) if kind in wanted else None
                if w is not None:
                    yield Matrix(f"blocks.{layer}.mlp.{kind}", kind, layer, None, (w,))
    if "W_E" in wanted:
        yield Matrix("W_E", "W_E", None, None, (model.W_E,))
    if "W_U" in wanted and model.has_lm_head:
        yield Matrix("W_U", "W_U", None, None, (model.W_U,))


# The result


def layer_figure(rows: list[dict], n_layers: int, stat: str, title: str):
    """`stat` across layers: a panel of whole matrices and one of every head's OV/QK circuit,
    each drawn only when the rows hold its kinds (no empty panel)."""
    from matplotlib.ticker import MaxNLocator

    kinds = {r["kind"] for r in rows}
    whole = [k for k in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out") if k in kinds]
    whole = [k for k in whole if not np.isnan(by_layer(rows, n_layers, k, stat)).all()]
    circuits = [k for k in ("OV", "QK") if k in kinds]
    panels = [name for name, keep in (("whole matrices", whole), ("per-head circuits", circuits)) if keep]
    fig, axes = figure(5 * max(1, len(panels)), 3.6, 1, max(1, len(panels)))
    title = title if len(title) <= 40 else "…" + title[-39:]
    layers = np.arange(n_layers)
    named = dict(zip(panels, axes[0]))
    for kind in whole:
        named["whole matrices"].plot(layers, by_layer(rows, n_layers, kind, stat)[:, 0], marker="o", ms=3, label=kind)
    for i, kind in enumerate(circuits):
        values = by_layer(rows, n_layers, kind, stat)
        offset = (i - 0.5) * 0.2
        ax = named["per-head circuits"]
        ax.scatter(np.repeat(layers, values.shape[1]) + offset, values.ravel(), s=10, alpha=0.6, color=f"C{i}")
        ax.plot(layers + offset, np.nanmean(values, axis=1), color=f"C{i}", label=f"{kind} (mean over heads)")
    for name, ax in named.items():
        ax.set_xlabel("layer")
        ax.set_ylabel(stat.replace("_", " "))
        ax.set_title(f"{title}: {name}", fontsize=10)
        if n_layers <= 16:
            ax.set_xticks(layers)
        else:  # integer ticks only: fractional layers overlap and mean nothing
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(-0.5, n_layers - 0.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not panels:
        axes[0, 0].set_title(f"{title}: no matrices of the kinds asked for", fontsize=10)
    return fig


def by_layer(rows: list[dict], n_layers: int, kind: str, stat: str) -> np.ndarray:
    """[n_layers, n] of `stat` from result rows: per head for OV/QK, else the whole matrix."""
    head_rows = kind in ("OV", "QK")
    chosen = [r for r in rows if r["kind"] == kind and r["layer"] is not None and (r["head"] is not None) == head_rows]
    width = max((r["head"] or 0) + 1 for r in chosen) if chosen else 1
    out = np.full((n_layers, width), np.nan)
    for r in chosen:
        out[r["layer"], r["head"] or 0] = r[stat]
    return out


@dataclass
class WeightSpectra:
    """Singular values and their statistics for every matrix of one model."""

    model: str
    rows: list[dict]
    """One per matrix: name, kind, layer, head, shape and the statistics of `STATS`."""
    values: dict[str, Tensor]
    """Singular values by matrix name, decreasing."""
    n_layers: int
    top_k: int = 8

    def to_records(self) -> list[dict]:
        return [dict(r) for r in self.rows]

    def to_frame(self):
        return frame(self.to_records())

    def scree(self, name: str) -> Scree:
        if name not in self.values:
            raise MechscopeError(f"no matrix named {name!r}: names look like {', '.join(list(self.values)[:4])}")
        return Scree.of(self.values[name].numpy(), "singular values", name)

    def by_layer(self, kind: str, stat: str = "effective_rank") -> np.ndarray:
        """[n_layers, n] values of `stat`: per head for OV/QK, else [n_layers, 1] for the
        whole matrix; NaN where a layer lacks it."""
        if stat not in STATS:
            raise MechscopeError(f"unknown statistic {stat!r}: choose from {', '.join(STATS)}")
        return by_layer(self.rows, self.n_layers, kind, stat)

    def plot(self, stat: str = "effective_rank"):
        """`stat` across layers: whole matrices (left), every head's OV and QK circuit (right)."""
        if stat not in STATS:
            raise MechscopeError(f"unknown statistic {stat!r}: choose from {', '.join(STATS)}")
        return layer_figure(self.rows, self.n_layers, stat, self.model)

    def save(self, folder) -> Path:
        folder = Path(folder)
        write_tensors(folder / "values.safetensors", self.values)
        save_json(
            folder / "cfg.json",
            {
                "kind": "weight_spectra",
                "model": self.model,
                "n_layers": self.n_layers,
                "top_k": self.top_k,
                "rows": self.rows,
            },
        )
        return folder

    @classmethod
    def load(cls, folder) -> "WeightSpectra":
        folder = Path(folder)
        cfg = load_json(folder / "cfg.json")
        return cls(cfg["model"], cfg["rows"], load_file(folder / "values.safetensors"), cfg["n_layers"], cfg["top_k"])


def weight_spectra(
    model,
    *,
    kinds: Sequence[str] | None = None,
    per_head: bool = True,
    top_k: int = 8,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> WeightSpectra:
    """Singular values and statistics of every matrix of `kinds` (default all of `KINDS`).

    Whole matrices are decomposed in `dtype` (float64 for precision, float32 for speed);
    circuits always in float64 through their factors."""
    from tqdm.auto import tqdm

    if top_k < 1:
        raise MechscopeError(f"top_k must be at least 1 (directions in the top-k energy share), got {top_k}")
    rows, values = [], {}
    with torch.no_grad():
        for m in tqdm(list(weight_matrices(model, kinds, per_head=per_head)), desc="spectra", disable=not progress):
            s = singular_values(m.factors, dtype).cpu()
            values[m.name] = s
            rows.append(
                {
                    "name": m.name,
                    "kind": m.kind,
                    "layer": m.layer,
                    "head": m.head,
                    "shape": list(m.shape),
                    **spectrum_stats(s, top_k),
                }
            )
    log.info("weight spectra of %s: %d matrices", model.name, len(rows))
    return WeightSpectra(model.name, rows, values, model.dims.n_layers, top_k)
