"""The unit-norm decoder's two row operations (topk, batchtopk, matryoshka, gated): the
gradient projection before the optimiser step and the renormalisation after it, at every
row or only at the rows a lazy-Adam step touched (lazy_adam.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import kernels
from .base import SparseCoder


@torch.no_grad()
def project_decoder_grad(coder: SparseCoder, rows: Tensor | None = None) -> None:
    """SparseCoder.before_step for unit-norm decoders, in place: g -= (g.w / w.w) w per row
    (only the given rows: the others' gradient is zero under lazy Adam). One native pass
    where the kernels are built: 10-30x torch's at 16k-262k latents (bench/README.md)."""
    W, g = coder.W_dec, coder.W_dec.grad
    if not coder.UNIT_NORM or g is None or kernels.project_rows(W, g, _all_rows(W) if rows is None else rows):
        return
    if rows is None:
        SparseCoder.before_step(coder)
        return
    W_r, g_r = W.index_select(0, rows), g.index_select(0, rows)
    coef = torch.linalg.vecdot(g_r, W_r) / torch.linalg.vecdot(W_r, W_r).clamp_min(1e-12)
    g.index_copy_(0, rows, g_r.addcmul_(W_r, coef[:, None], value=-1.0))


@torch.no_grad()
def renormalise_rows(coder: SparseCoder, rows: Tensor | None = None) -> None:
    """SparseCoder.after_step at the given decoder rows only (the rows lazy Adam moved), or
    at every row; one native pass where it can."""
    W = coder.W_dec.data
    if not coder.UNIT_NORM or kernels.normalise_rows(W, _all_rows(W) if rows is None else rows):
        return
    if rows is None:
        SparseCoder.after_step(coder)
        return
    W_r = W.index_select(0, rows)
    W.index_copy_(0, rows, W_r.div_(W_r.norm(dim=-1, keepdim=True).clamp_min(1e-12)))


def _all_rows(W: Tensor) -> Tensor:
    return torch.arange(W.shape[0], device=W.device)
