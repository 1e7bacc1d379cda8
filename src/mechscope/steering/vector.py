"""`SteeringVector`: the applied artefact — one direction per site, with what is needed to
use it responsibly (layer, activation scale, provenance) — and its arithmetic.

Directions are stored as they were fitted (mean difference in activation units; PCA
methods give unit directions). A strength multiplies the direction as stored, as in
steering-vectors' `multiplier`; `normalized("unit" | "activation")` rescales explicitly,
"activation" making strength 1 one mean activation norm at each site, so strengths are
comparable across layers.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from .. import io
from ..errors import MechscopeError
from ..folders import recover_folder, replace_folder, staging_folder

log = logging.getLogger(__name__)

KIND = "steering_vector"
TENSORS = "directions.safetensors"
NORMALIZATIONS = ("none", "unit", "activation")
_LAYER = re.compile(r"^blocks\.(\d+)\.")


def layer_of(site: str) -> int | None:
    """The block index in a site name (`blocks.3.hook_resid_post` -> 3), None for others."""
    found = _LAYER.match(site)
    return int(found.group(1)) if found else None


def check_strength(strength: Any, what: str = "strength") -> None:
    """A strength is a finite number or a tensor of finite numbers (one per batch row)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float, Tensor)):
        raise MechscopeError(f"{what} must be a number, got {strength!r}")
    finite = bool(torch.isfinite(strength).all()) if isinstance(strength, Tensor) else math.isfinite(strength)
    if not finite:
        raise MechscopeError(f"{what} must be finite, got {strength!r}: give a number such as 4.0")


@dataclass(frozen=True)
class SteeringVector:
    """One direction per site, applied by adding `strength * direction` there.

    Invariants: every direction is a float32 [d_model] tensor of the same width; `norms`
    holds, per site, the mean activation norm where it was read (0 when unknown);
    arithmetic (`+`, `-`, `*` by a number) keeps provenance and refuses vectors of another
    width or model.

        v = ms.steering.contrast(model, pairs, "blocks.2.hook_resid_post")
        with ms.steering.steered(model, (v, 4.0)):
            model.generate("def ")
    """

    directions: dict[str, Float[Tensor, " d_model"]]
    """Site name -> direction (what a strength of 1 adds there)."""
    norms: dict[str, float] = field(default_factory=dict)
    """Site name -> mean norm of the activations the direction was read from."""
    method: str = "mean_diff"
    """How it was made: mean_diff, pca_diff, pca_center, feature, gguf, combination..."""
    model_name: str = ""
    """The model it was read on."""
    n_pairs: int = 0
    """How many contrast pairs it was fitted on."""
    read: str = "last"
    """Which positions were read: last, mean, or a list of positions."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (source file, latent, normalisation)."""

    def __post_init__(self):
        if not self.directions:
            raise MechscopeError("a steering vector needs at least one site with a direction")
        widths = {tuple(d.shape) for d in self.directions.values()}
        if len(widths) != 1 or len(next(iter(widths))) != 1:
            raise MechscopeError(f"steering directions must be [d_model] vectors of one width, got shapes {widths}")
        for site, d in self.directions.items():
            if not bool(torch.isfinite(d).all()):
                raise MechscopeError(f"the direction at '{site}' has NaN or infinite entries")

    @property
    def d_model(self) -> int:
        return next(iter(self.directions.values())).shape[0]

    @property
    def sites(self) -> list[str]:
        return list(self.directions)

    @property
    def layers(self) -> dict[str, int | None]:
        return {s: layer_of(s) for s in self.directions}

    def __repr__(self) -> str:
        parts = ", ".join(f"{s} (norm {float(d.norm()):.3g})" for s, d in self.directions.items())
        return f"SteeringVector({self.method}, {parts}, model={self.model_name!r}, pairs={self.n_pairs})"

    # Arithmetic

    def _combine(self, other: SteeringVector, sign: float) -> SteeringVector:
        if not isinstance(other, SteeringVector):
            return NotImplemented
        if other.d_model != self.d_model:
            raise MechscopeError(f"cannot combine steering vectors of width {self.d_model} and {other.d_model}")
        if self.model_name and other.model_name and self.model_name != other.model_name:
            raise MechscopeError(
                f"cannot combine a vector for {self.model_name!r} with one for {other.model_name!r}: "
                "read both on the same model"
            )
        dirs = dict(self.directions)
        for site, d in other.directions.items():
            dirs[site] = dirs[site] + sign * d if site in dirs else sign * d
        return SteeringVector(
            dirs,
            {**other.norms, **self.norms},
            "combination",
            self.model_name or other.model_name,
            self.n_pairs + other.n_pairs,
            self.read if self.read == other.read else "mixed",
        )

    def __add__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, 1.0)

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self._combine(other, -1.0)

    def __mul__(self, factor: float) -> SteeringVector:
        check_strength(factor, "a steering vector's factor")
        if isinstance(factor, Tensor):
            raise MechscopeError("multiply a steering vector by a number; per-row strengths go to edits(strength=)")
        return replace(self, directions={s: d * float(factor) for s, d in self.directions.items()})

    __rmul__ = __mul__

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __truediv__(self, factor: float) -> SteeringVector:
        return self * (1.0 / factor)

    def normalized(self, how: str = "unit") -> SteeringVector:
        """Rescaled directions: "unit" (norm 1), "activation" (norm = the site's mean
        activation norm, so strength 1 is one typical activation), "none" (as is)."""
        if how not in NORMALIZATIONS:
            raise MechscopeError(f"normalisation must be one of {', '.join(NORMALIZATIONS)}, got {how!r}")
        if how == "none":
            return self
        missing = [s for s in self.directions if how == "activation" and not self.norms.get(s)]
        if missing:
            raise MechscopeError(
                f"no activation norm is known at {missing[0]}: normalise with 'unit' or read the vector with contrast()"
            )
        scale = {s: (self.norms[s] if how == "activation" else 1.0) for s in self.directions}
        dirs = {s: d / d.norm().clamp_min(1e-12) * scale[s] for s, d in self.directions.items()}
        return replace(self, directions=dirs, meta={**self.meta, "normalized": how})

    def only(self, *sites: str) -> SteeringVector:
        """The same vector restricted to some of its sites."""
        unknown = [s for s in sites if s not in self.directions]
        if unknown:
            raise MechscopeError(f"this vector has no direction at {unknown[0]}; it has {', '.join(self.sites)}")
        return replace(self, directions={s: self.directions[s] for s in sites})

    def check_model(self, model) -> None:
        """Refuse a model of another width or without one of the sites."""
        width = model.dims.d_model if hasattr(model, "dims") else None
        if width is not None and width != self.d_model:
            raise MechscopeError(
                f"this steering vector has d_model={self.d_model} (read on {self.model_name or 'another model'}) "
                f"but {model.name} has d_model={width}: read a vector on this model"
            )
        for site in self.directions:
            model.table[site]  # an unknown site fails here, with suggestions
        if self.model_name and self.model_name != model.name:
            log.warning(
                "this steering vector was read on %s, not %s: it may mean nothing here", self.model_name, model.name
            )

    # Saving

    def save(self, path: str | Path) -> Path:
        """A folder: cfg.json (everything but the directions) + directions.safetensors."""
        path = Path(path)
        recover_folder(path)
        tmp = staging_folder(path)
        io.write_tensors(tmp / TENSORS, {s: d.float() for s, d in self.directions.items()})
        io.write_json(tmp / "cfg.json", self.config())
        return replace_folder(tmp, path)

    def config(self) -> dict:
        return {
            "kind": KIND,
            "sites": self.sites,
            "layers": self.layers,
            "d_model": self.d_model,
            "norms": self.norms,
            "method": self.method,
            "model_name": self.model_name,
            "n_pairs": self.n_pairs,
            "read": self.read,
            "meta": self.meta,
        }

    @classmethod
    def load(cls, path: str | Path) -> SteeringVector:
        path = Path(path)
        if path.is_dir():
            recover_folder(path)
        if not (path / "cfg.json").is_file() or not (path / TENSORS).is_file():
            raise MechscopeError(f"no steering vector at '{path}': expected a folder with cfg.json and {TENSORS}")
        cfg = io.read_json(path / "cfg.json")
        if cfg.get("kind") != KIND:
            raise MechscopeError(f"'{path}' holds {cfg.get('kind') or 'something else'!r}, not a steering vector")
        tensors = io.read_tensors(path / TENSORS, what="steering directions")
        sites = cfg.get("sites", list(tensors))
        if set(sites) != set(tensors):
            raise MechscopeError(f"'{path}': cfg.json names sites {sites} but the tensors hold {sorted(tensors)}")
        return cls(
            {s: tensors[s].float() for s in sites},
            {str(k): float(v) for k, v in dict(cfg.get("norms") or {}).items()},
            str(cfg.get("method", "mean_diff")),
            str(cfg.get("model_name", "")),
            int(cfg.get("n_pairs", 0)),
            str(cfg.get("read", "last")),
            dict(cfg.get("meta") or {}),
        )


def compose(terms: list[tuple[SteeringVector, float]]) -> SteeringVector:
    """sum(a * v) over (v, a) terms: one vector over every site they touch, applied in one
    forward (at a shared site the scaled directions add)."""
    if not terms:
        raise MechscopeError("compose needs at least one (vector, strength) pair")
    total = None
    for vector, strength in terms:
        scaled = vector * strength
        total = scaled if total is None else total + scaled
    assert total is not None
    return replace(total, method="combination")
