"""Gradient memory kept between training steps of a wide dictionary.

A fresh [d, width] gradient every step is memory the sparse backward must map and zero page
by page (most of the backward's time at 262k latents). The trainer hands each finished
gradient back (`give_back`) and the next backward (`kernels.scatter_columns`,
`kernels.decode_backward`) overwrites it in place; the scatter's row buffer is kept between
calls the same way. Only memory is reused: every entry is written again, so the values are
those of a fresh tensor."""

from __future__ import annotations

import torch
from torch import Tensor

_spares: dict[tuple[int, tuple[int, ...]], Tensor] = {}
_scratches: list[Tensor] = []


def give_back(weight: Tensor, grad: Tensor | None) -> None:
    """`grad`, a used gradient of `weight`, for the next backward of `weight` to overwrite.
    The caller drops its own references (`zero_grad(set_to_none=True)`) right after."""
    if grad is None or grad.device.type != "cpu" or not grad.is_contiguous():
        return
    if grad.dtype == torch.float32 and not grad.requires_grad:
        _spares[(weight.data_ptr(), tuple(grad.shape))] = grad


def drop_spares() -> None:
    """Free what `give_back` and the scatter kept (the end of a training run)."""
    _spares.clear()
    _scratches.clear()


def output(weight: Tensor | None, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """The gradient handed back for `weight` when it has this shape, else a new tensor."""
    spare = None if weight is None else _spares.pop((weight.data_ptr(), shape), None)
    return like.new_empty(shape) if spare is None else spare


def scratch(numel: int) -> Tensor:
    """A float32 buffer of at least `numel` entries, kept for the next call (the largest one)."""
    if not _scratches or _scratches[0].numel() < numel:
        _scratches[:] = [torch.empty(numel, dtype=torch.float32)]
    return _scratches[0]
