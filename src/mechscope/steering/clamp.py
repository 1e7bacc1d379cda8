"""Steering with a dictionary: a latent's decoder row as a vector (`from_feature`), and
clamping latents (`clamp`) as an edit that keeps the SAE's own error.

clamp encodes the site, sets the chosen latents, decodes, and adds back the error
x - x_hat, i.e. returns x + (x_hat(acts') - x_hat(acts)): clamping a latent to the value it
has leaves the activation exactly unchanged, and clamping it to 0 removes exactly its
decoder contribution, acts_i * W_dec[i] (in raw units).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from .. import edits as edit_ops
from ..edits import Edit
from ..errors import MechscopeError
from ..hooks import Offsets
from .apply import PositionMask
from .vector import SteeringVector


def coder_of(sae_or_folder):
    """A SparseCoder, from itself or from a folder in any layout `dictionary.read` knows."""
    from ..dictionary import SparseCoder, read

    if isinstance(sae_or_folder, SparseCoder):
        return sae_or_folder
    if isinstance(sae_or_folder, (str, Path)):
        return read(sae_or_folder)
    raise MechscopeError(f"give a dictionary (SparseCoder) or its folder, got {type(sae_or_folder).__name__}")


def _check_latent(coder, latent: int) -> None:
    if isinstance(latent, bool) or not isinstance(latent, int) or not 0 <= latent < coder.cfg.d_sae:
        raise MechscopeError(
            f"latent {latent!r} is out of range: this dictionary has {coder.cfg.d_sae} latents "
            f"(0-{coder.cfg.d_sae - 1})"
        )


def from_feature(sae_or_folder, latent: int, *, site: str | None = None) -> SteeringVector:
    """The latent's decoder row in raw activation units (what one unit of the latent adds to
    the reconstruction), at the dictionary's site: strength s is the latent firing at s."""
    coder = coder_of(sae_or_folder)
    _check_latent(coder, latent)
    site = site or coder.cfg.hook_name
    if not site:
        raise MechscopeError("this dictionary does not say which site it reads (cfg.hook_name is empty): pass site=")
    if coder.cfg.transcoder:
        raise MechscopeError("a transcoder's decoder writes another site than it reads: steer with an SAE")
    row = coder.W_dec[latent].detach().float()
    scale = 1.0 if coder.cfg.input_norm != "none" else coder.cfg.norm_scale
    return SteeringVector(
        {site: row / scale},
        method="feature",
        model_name=coder.cfg.model_name,
        read="decoder",
        meta={"latent": latent, "arch": coder.cfg.arch, "input_norm": coder.cfg.input_norm},
    )


class Clamp:
    """The function of a clamp edit: set `latents` (index -> value, a number or a tensor
    broadcastable to [batch, pos]) where `rows` [batch] and `where` select; keep the error."""

    def __init__(self, coder, latents: dict[int, float | Tensor], rows: Tensor | None, mask: PositionMask):
        self.coder, self.latents, self.rows, self.mask = coder, latents, rows, mask

    def bind(self, offsets: Offsets) -> Clamp:
        if self.mask.offsets is not None:
            return self
        return Clamp(self.coder, self.latents, self.rows, PositionMask(self.mask.where, offsets))

    def __call__(self, x: Tensor) -> Tensor:
        flat = x.reshape(*x.shape[:2], -1)
        acts = self.coder.encode(flat)
        chosen = torch.ones(acts.shape[:2], dtype=torch.bool, device=acts.device)
        positions = self.mask(acts.shape[1], acts.device)
        if positions is not None:
            chosen = chosen & positions[None, :]
        if self.rows is not None:
            if len(self.rows) != acts.shape[0]:
                raise MechscopeError(f"clamp rows has {len(self.rows)} entries but the batch has {acts.shape[0]} rows")
            chosen = chosen & self.rows.to(acts.device)[:, None]
        new = acts.clone()
        for latent, value in self.latents.items():
            target = torch.as_tensor(value, dtype=acts.dtype, device=acts.device).expand(acts.shape[:2])
            new[..., latent] = torch.where(chosen, target, acts[..., latent])
        delta = self.coder.decode(new, x=flat) - self.coder.decode(acts, x=flat)
        return x + delta.to(x.dtype).reshape(x.shape)


def clamp(
    sae_or_folder,
    latents: dict[int, float | Tensor],
    *,
    model=None,
    site: str | None = None,
    where: str = "all",
    rows: Tensor | None = None,
) -> Edit:
    """An edit clamping dictionary latents: {latent: value} (value a number, or a tensor
    broadcastable to [batch, pos]); `rows` [batch] bool restricts it to some rows of a batch;
    `where` as for vectors. With `model`, the site is checked against the dictionary."""
    coder = coder_of(sae_or_folder)
    if not latents:
        raise MechscopeError("clamp needs at least one latent: {latent: value}")
    for latent, value in latents.items():
        _check_latent(coder, latent)
        finite = bool(torch.isfinite(value).all()) if isinstance(value, Tensor) else _finite_number(value)
        if not finite:
            raise MechscopeError(f"clamp value for latent {latent} must be a finite number, got {value!r}")
    if model is not None:
        from ..dictionary.attach import site_of

        site = site_of(model, coder, site)
    site = site or coder.cfg.hook_name
    if not site:
        raise MechscopeError("this dictionary does not say which site it reads (cfg.hook_name is empty): pass site=")
    fn = Clamp(coder, dict(latents), rows, PositionMask(where, None))
    return edit_ops.replace(site, fn)


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
