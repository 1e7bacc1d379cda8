"""The difference of two models' weights (a base and its fine-tune): is the update
low-rank, and along which directions?

For every matrix of `spectra.weight_matrices` (the same names) the update
ΔW = W_tuned - W_base is decomposed. Circuits are differences of products,
A_t B_t - A_b B_b = [A_t, A_b] @ [B_t; -B_b], so their updates also go through
`factored_svd` (rank <= 2 d_head) and are never multiplied out. Per matrix:

- `norm` ‖ΔW‖_F and `relative_norm` ‖ΔW‖_F / ‖W_base‖_F;
- `rank`: numerical rank, the number of σ_i(ΔW) > rtol · (σ_1(W_base) + σ_1(ΔW)) (the
  bracket bounds ‖W_tuned‖_2; rtol = 1e-5 sits above float32 rounding of the weights);
- `elbow`: the profile-likelihood elbow (Zhu & Ghodsi) of ΔW's singular values, the
  rank a noisy, not exactly low-rank update looks like (0 when the rank is 0);
- the statistics of `spectra.STATS` of ΔW;
- `angles_left` / `angles_right`: principal angles (degrees, increasing) between the span
  of ΔW's top min(k, rank) left (right) singular vectors and the span of W_base's top k:
  0° means the update acts inside the base's dominant directions, 90° outside them.
The top singular vectors of each update are kept (`directions(name)`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from ..errors import MechscopeError
from ..io import write_tensors
from ._common import frame, load_json, save_json
from .scree import Scree
from .spectra import STATS, Matrix, by_layer, check_model, factored_svd, layer_figure, spectrum_stats, weight_matrices

log = logging.getLogger(__name__)
DIMS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_head", "d_mlp", "d_vocab")


def check_same_shapes(base, tuned) -> None:
    check_model(base)
    check_model(tuned)
    differ = [
        f"{f}={getattr(base.dims, f)} vs {getattr(tuned.dims, f)}"
        for f in DIMS
        if getattr(base.dims, f) != getattr(tuned.dims, f)
    ]
    if differ:
        raise MechscopeError(
            f"the two models' shapes differ ({base.name} vs {tuned.name}: {', '.join(differ)}); "
            "a weight diff needs the same architecture, e.g. a base model and its fine-tune"
        )


def _svd(m: Matrix, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    if len(m.factors) == 1:
        return torch.linalg.svd(m.factors[0].detach().to(dtype), full_matrices=False)
    return factored_svd(*(f.detach().double() for f in m.factors))


def _update(base: Matrix, tuned: Matrix, dtype: torch.dtype) -> Matrix:
    if [tuple(f.shape) for f in base.factors] != [tuple(f.shape) for f in tuned.factors]:
        raise MechscopeError(
            f"the two models' shapes differ at {base.name}: {list(base.shape)} vs {list(tuned.shape)}; "
            "a weight diff needs the same architecture"
        )
    if len(base.factors) == 1:
        return Matrix(
            base.name, base.kind, base.layer, base.head, (tuned.factors[0].to(dtype) - base.factors[0].to(dtype),)
        )
    (ab, bb), (at, bt) = base.factors, tuned.factors
    if torch.equal(ab, at) and torch.equal(bb, bt):  # exactly no update (rounding would leave ~1e-17)
        return Matrix(
            base.name,
            base.kind,
            base.layer,
            base.head,
            (ab.new_zeros(len(ab), 1).double(), bb.new_zeros(1, bb.shape[1]).double()),
        )
    a = torch.cat([at.double(), ab.double()], dim=1)
    b = torch.cat([bt.double(), -bb.double()], dim=0)
    return Matrix(base.name, base.kind, base.layer, base.head, (a, b))


def principal_angles(u: Tensor, v: Tensor) -> list[float]:
    """Principal angles (degrees, increasing) between the column spans of u and v
    (scipy's `subspace_angles`, accurate for small angles, unlike arccos of cosines)."""
    from scipy.linalg import subspace_angles

    if u.shape[1] == 0 or v.shape[1] == 0:
        return []
    angles = subspace_angles(u.double().numpy(), v.double().numpy())
    return sorted(np.degrees(angles).tolist())


def diff_matrix(base: Matrix, tuned: Matrix, *, k: int, rtol: float, dtype: torch.dtype) -> tuple[dict, dict]:
    """The row and the tensors (update σ, top directions) of one matrix's update."""
    ub, sb, vhb = _svd(base, dtype)
    update = _update(base, tuned, dtype)
    ud, sd, vhd = _svd(update, dtype)
    sd = sd.double().cpu()
    tol = rtol * (float(sb[0]) + float(sd[0]) if len(sd) else 0.0)
    rank = int((sd > tol).sum()) if len(sd) else 0
    kk = min(k, rank)
    base_norm = float(sb.double().norm())
    stats = spectrum_stats(sd, k)
    row = {
        "name": base.name,
        "kind": base.kind,
        "layer": base.layer,
        "head": base.head,
        "shape": list(base.shape),
        "norm": stats["frobenius"],
        "relative_norm": stats["frobenius"] / base_norm if base_norm > 0 else math.nan,
        "rank": rank,
        "elbow": Scree.of(sd.numpy(), "").elbow if rank and len(sd) >= 3 else rank,
        **stats,
        "angles_left": principal_angles(ud[:, :kk].cpu(), ub[:, :k].cpu()),
        "angles_right": principal_angles(vhd[:kk].T.cpu(), vhb[:k].T.cpu()),
    }
    tensors = {f"{base.name}.S": sd}
    if kk:
        tensors[f"{base.name}.U"] = ud[:, :kk].cpu()
        tensors[f"{base.name}.V"] = vhd[:kk].T.cpu()
    return row, tensors


@dataclass
class WeightDiff:
    """Low-rank structure of the update from `base` to `tuned` (see the module docstring)."""

    base: str
    tuned: str
    rows: list[dict]
    tensors: dict[str, Tensor]
    """'{name}.S': the update's singular values; '{name}.U' / '{name}.V': its top directions."""
    n_layers: int
    k: int = 8
    rtol: float = 1e-5

    def to_records(self) -> list[dict]:
        return [dict(r) for r in self.rows]

    def to_frame(self):
        return frame(self.to_records())

    def row(self, name: str) -> dict:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise MechscopeError(f"no matrix named {name!r}: names look like {', '.join(r['name'] for r in self.rows[:4])}")

    def directions(self, name: str) -> tuple[Tensor, Tensor, Tensor]:
        """(σ of the top directions, left vectors [m, r], right vectors [n, r]) of one update,
        r = min(k, rank): ΔW ≈ U diag(σ) Vᵀ."""
        rank = min(self.k, self.row(name)["rank"])
        if rank == 0:
            return torch.zeros(0), torch.zeros(0, 0), torch.zeros(0, 0)
        return self.tensors[f"{name}.S"][:rank], self.tensors[f"{name}.U"], self.tensors[f"{name}.V"]

    def scree(self, name: str) -> Scree:
        self.row(name)
        return Scree.of(self.tensors[f"{name}.S"].numpy(), "singular values of the update", name)

    def by_layer(self, kind: str, stat: str = "relative_norm"):
        return by_layer(self.rows, self.n_layers, kind, stat)

    def plot(self, stat: str = "relative_norm"):
        """`stat` of the update across layers (e.g. relative_norm, rank, elbow, effective_rank)."""
        allowed = ("norm", "relative_norm", "rank", "elbow") + STATS
        if stat not in allowed:
            raise MechscopeError(f"unknown statistic {stat!r}: choose from {', '.join(allowed)}")
        return layer_figure(self.rows, self.n_layers, stat, f"{self.tuned} - {self.base}")

    def save(self, folder) -> Path:
        folder = Path(folder)
        write_tensors(folder / "update.safetensors", self.tensors)
        save_json(
            folder / "cfg.json",
            {
                "kind": "weight_diff",
                "base": self.base,
                "tuned": self.tuned,
                "n_layers": self.n_layers,
                "k": self.k,
                "rtol": self.rtol,
                "rows": self.rows,
            },
        )
        return folder

    @classmethod
    def load(cls, folder) -> "WeightDiff":
        folder = Path(folder)
        cfg = load_json(folder / "cfg.json")
        return cls(
            cfg["base"],
            cfg["tuned"],
            cfg["rows"],
            load_file(folder / "update.safetensors"),
            cfg["n_layers"],
            cfg["k"],
            cfg["rtol"],
        )


def weight_diff(
    base,
    tuned,
    *,
    kinds: Sequence[str] | None = None,
    per_head: bool = True,
    k: int = 8,
    rtol: float = 1e-5,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> WeightDiff:
    """The update tuned - base of every matrix of `kinds` (see the module docstring)."""
    from tqdm.auto import tqdm

    if k < 1:
        raise MechscopeError(f"k must be at least 1 (top directions of each update), got {k}")
    check_same_shapes(base, tuned)
    pairs = list(zip(weight_matrices(base, kinds, per_head=per_head), weight_matrices(tuned, kinds, per_head=per_head)))
    names_b = [b.name for b, _ in pairs]
    names_t = [m.name for m in weight_matrices(tuned, kinds, per_head=per_head)]
    if names_b != names_t:
        only = sorted(set(names_b) ^ set(names_t))
        raise MechscopeError(
            f"the two models' shapes differ: only one of them has {', '.join(only[:4])}; "
            "a weight diff needs the same architecture"
        )
    rows, tensors = [], {}
    with torch.no_grad():
        for b, t in tqdm(pairs, desc="weight diff", disable=not progress):
            row, found = diff_matrix(b, t, k=k, rtol=rtol, dtype=dtype)
            rows.append(row)
            tensors.update(found)
    log.info("weight diff %s -> %s: %d matrices", base.name, tuned.name, len(rows))
    return WeightDiff(base.name, tuned.name, rows, tensors, base.dims.n_layers, k, rtol)
