"""Weight forensics: what an edit (ROME) or a fine-tune changed, read from the weights.

`edit_forensics(base, edited)` compares every whole matrix of the two models (the names of
`spectra.weight_matrices`, [in, out] as activations multiply them: `x @ W`). Per matrix:
‖ΔW‖_F, ‖ΔW‖_F / ‖W_base‖_F, the numerical rank of ΔW against the noise floor
tol = rtol · (σ_1(W_base) + σ_1(ΔW)) (as in `weight_diff`), σ_2/σ_1 and the top of the
spectrum. The SVD is the checked randomised solver of `lowrank.py` (a full SVD where ΔW is
not low-rank), so a 4096 x 11008 pair with a rank-one update takes well under a second
per matrix.

For a rank-one update ΔW = σ u vᵀ (ROME: W_out += (C⁻¹k*) Λᵀ in this orientation) u is the
key direction, the input the edit responds to, and v the value direction, what it writes.
`edit_reading.read_update` maps them to meaning: the candidate subjects (or corpus tokens)
whose keys at that matrix's input get the largest response |uᵀk| (the update adds
σ (uᵀk) v for key k), and the tokens the update promotes through the later layers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file
from torch import Tensor

from ..errors import MechscopeError
from ..io import write_tensors
from ._common import frame, load_json, save_json
from .forensics_plots import key_figure, promoted_figure, spectra_figure
from .lowrank import LowRankSVD, lowrank_svd, sigma_max
from .spectra import Matrix, spectrum_stats, weight_matrices
from .weight_diff import check_same_shapes

log = logging.getLogger(__name__)
MATRIX_KINDS = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out", "W_E", "W_U")
"""Whole matrices compared by `edit_forensics` (the per-head circuits add nothing an edit
of a whole matrix does not show)."""


def compare_matrix(base: Matrix, edited: Matrix, *, k: int, rtol: float, guess: int) -> tuple[dict, dict]:
    """The row and the tensors (σ, key and value directions) of one matrix's update."""
    (wb,), (we,) = base.factors, edited.factors
    if wb.shape != we.shape:
        raise MechscopeError(
            f"the two models' shapes differ at {base.name}: {list(wb.shape)} vs {list(we.shape)}; "
            "forensics needs the same architecture (a model and its edit or fine-tune)"
        )
    row: dict[str, Any] = {"name": base.name, "kind": base.kind, "layer": base.layer, "shape": list(wb.shape)}
    if torch.equal(wb, we):
        return {**row, "norm": 0.0, "relative_norm": 0.0, "rank": 0, "sigma_ratio": math.nan, "solver": "equal"}, {}
    wb32, delta = wb.detach().float(), (we.detach().float() - wb.detach().float())
    svd = lowrank_svd(delta, rtol=rtol, scale=sigma_max(wb32), guess=guess)
    norm, base_norm = float(torch.linalg.vector_norm(delta)), float(torch.linalg.vector_norm(wb32))
    s = svd.S.double().cpu()
    kk = max(min(k, svd.rank), 1)
    row |= {
        "norm": norm,
        "relative_norm": norm / base_norm if base_norm > 0 else math.nan,
        "rank": svd.rank,
        "noise_floor": svd.tol,
        "sigma_ratio": float(s[1] / s[0]) if len(s) > 1 and s[0] > 0 else 0.0,
        "solver": svd.solver,
        "residual": svd.residual,
        **spectrum_stats(s, k),
    }
    tensors = {f"{base.name}.S": s[: max(kk + 8, 16)], f"{base.name}.U": svd.U[:, :kk].cpu()}
    tensors[f"{base.name}.V"] = svd.V[:, :kk].cpu()
    return row, tensors


@dataclass
class EditForensics:
    """What changed from `base` to `edited` (see the module docstring)."""

    base: str
    edited: str
    rows: list[dict]
    """One per matrix: name, kind, layer, shape, norm, relative_norm, rank, noise_floor,
    sigma_ratio (σ_2/σ_1), solver and the spectrum statistics of ΔW."""
    tensors: dict[str, Tensor]
    """'{name}.S' top singular values of ΔW; '{name}.U' key (input-side) and '{name}.V'
    value (output-side) directions, ΔW ≈ U diag(S) Vᵀ in the [in, out] orientation."""
    readings: dict[str, dict]
    """Per rank-one matrix: 'keys' (candidates by match with the key direction), 'promoted'
    (tokens by the update's effect through the later layers), 'promoted_direct' (logit
    lens of v), 'sign' (the sign that makes v what is added for the matched key)."""
    rtol: float = 1e-5

    def to_records(self) -> list[dict]:
        return [dict(r) for r in self.rows]

    def to_frame(self):
        return frame(self.to_records())

    def changed(self) -> list[str]:
        """Names of the matrices whose update has a rank above the noise floor, largest norm first."""
        rows = sorted((r for r in self.rows if r["rank"] > 0), key=lambda r: -r["norm"])
        return [r["name"] for r in rows]

    def row(self, name: str) -> dict:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise MechscopeError(f"no matrix named {name!r}: names look like {', '.join(r['name'] for r in self.rows[:4])}")

    def update(self, name: str, rank: int | None = None) -> Tensor:
        """The recovered update U diag(S) Vᵀ [in, out] (float64) of its top `rank` (default:
        its numerical rank, at most the directions kept) directions."""
        r = self.row(name)["rank"] if rank is None else rank
        if r == 0:
            raise MechscopeError(f"{name} did not change (rank 0): there is no update to recover")
        u, v = self.tensors[f"{name}.U"], self.tensors[f"{name}.V"]
        r = min(r, u.shape[1])
        s = self.tensors[f"{name}.S"][:r]
        return (u[:, :r].double() * s) @ v[:, :r].double().T

    def plot_spectra(self):
        """Singular values of every changed matrix's update, with its noise floor."""
        return spectra_figure(self.rows, self.tensors, self.changed(), f"{self.edited} - {self.base}")

    def plot_keys(self, name: str | None = None, top: int = 15):
        """Bar chart of the best-matching keys of a rank-one update."""
        name = name or self._read_name()
        return key_figure(self.readings[name]["keys"][:top], name)

    def plot_promoted(self, name: str | None = None, top: int = 15):
        """Bar chart of the tokens a rank-one update promotes."""
        name = name or self._read_name()
        return promoted_figure(self.readings[name], name, top)

    def _read_name(self) -> str:
        if not self.readings:
            raise MechscopeError("no rank-one update was read (pass candidates or a corpus to edit_forensics)")
        return next(iter(self.readings))

    def save(self, folder) -> Path:
        folder = Path(folder)
        write_tensors(folder / "update.safetensors", self.tensors)
        save_json(
            folder / "cfg.json",
            {
                "kind": "edit_forensics",
                "base": self.base,
                "edited": self.edited,
                "rtol": self.rtol,
                "rows": self.rows,
                "readings": self.readings,
            },
        )
        return folder

    @classmethod
    def load(cls, folder) -> "EditForensics":
        folder = Path(folder)
        cfg = load_json(folder / "cfg.json")
        if cfg.get("kind") != "edit_forensics":
            raise MechscopeError(f"{folder} holds a {cfg.get('kind')!r} result, not edit forensics")
        tensors = load_file(folder / "update.safetensors")
        return cls(cfg["base"], cfg["edited"], cfg["rows"], tensors, cfg["readings"], cfg["rtol"])


def _pairs(base, edited, kinds: Sequence[str]) -> list[tuple[Matrix, Matrix]]:
    check_same_shapes(base, edited)
    mb = list(weight_matrices(base, kinds, per_head=False))
    me = list(weight_matrices(edited, kinds, per_head=False))
    if [m.name for m in mb] != [m.name for m in me]:
        only = sorted({m.name for m in mb} ^ {m.name for m in me})
        raise MechscopeError(
            f"the two models' matrices differ: only one of them has {', '.join(only[:4])}; "
            "forensics needs the same architecture"
        )
    return list(zip(mb, me))


def edit_forensics(
    base,
    edited,
    corpus: str | Sequence[str] | None = None,
    *,
    candidates: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    kinds: Sequence[str] = MATRIX_KINDS,
    k: int = 8,
    rtol: float = 1e-5,
    guess: int = 4,
    top: int = 20,
    max_tokens: int = 20_000,
    progress: bool = False,
) -> EditForensics:
    """Which matrices changed from `base` to `edited`, the rank and spectrum of each update,
    and, for rank-one updates of a matrix with a key site (W_out, W_in, W_gate, W_O), what
    it responds to and what it writes (see the module docstring and `edit_reading`).

    corpus: documents (a path or texts) whose tokens' keys are matched too (alone, they
    are the only candidates: the best contexts then carry the promotion).
    candidates: subject names, each recorded at its last token in every template ("{}"
    marks the name; default `edit_reading.TEMPLATES`).
    guess: the expected rank of an update (the randomised solver starts there).
    """
    from tqdm.auto import tqdm

    from .edit_reading import read_update

    if k < 1:
        raise MechscopeError(f"k must be at least 1 (directions kept per update), got {k}")
    unknown = set(kinds) - set(MATRIX_KINDS)
    if unknown:
        raise MechscopeError(
            f"unknown matrix kind(s) {', '.join(sorted(unknown))}: choose from {', '.join(MATRIX_KINDS)}"
        )
    rows, tensors = [], {}
    with torch.no_grad():
        for b, e in tqdm(_pairs(base, edited, kinds), desc="forensics", disable=not progress):
            row, found = compare_matrix(b, e, k=k, rtol=rtol, guess=guess)
            rows.append(row)
            tensors.update(found)
    result = EditForensics(base.name, edited.name, rows, tensors, {}, rtol)
    for name in result.changed():
        r = result.row(name)
        if r["rank"] == 1 and (candidates or corpus is not None):
            reading = read_update(
                base, r, _direction(result, name), corpus, candidates, templates, top=top, max_tokens=max_tokens
            )
            if reading is not None:
                result.readings[name] = reading
    log.info("forensics %s -> %s: %d of %d matrices changed", base.name, edited.name, len(result.changed()), len(rows))
    return result


def _direction(result: EditForensics, name: str) -> LowRankSVD:
    t = result.tensors
    return LowRankSVD(t[f"{name}.U"][:, :1], t[f"{name}.S"][:1], t[f"{name}.V"][:, :1], 0.0, "kept", 0.0)
