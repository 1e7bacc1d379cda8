"""Norms seen as linear maps with their scale frozen (the convention of direct logit
attribution): once the scale of a given input is fixed, a LayerNorm or RMSNorm is
linear, so the contributions of the parts of a sum can be pushed through it one by one.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def frozen_norm(module: nn.Module, x: Tensor, gain_offset: float = 0.0) -> Callable[[Tensor], Tensor]:
    """A function h -> norm_x(h): the norm with centring, scale and gain of input `x`, no bias.

    For any split x = sum_i h_i, sum_i f(h_i) + bias == module(x) (up to float error).
    `gain_offset` is 1.0 for Gemma's RMSNorm, which multiplies by (1 + weight).
    """
    # LayerNorms centre, RMSNorms do not; Cohere's LayerNorm has no bias and is no nn.LayerNorm
    centre = (
        isinstance(module, nn.LayerNorm)
        or type(module).__name__.endswith("LayerNorm")
        or hasattr(module, "bias")
        and module.bias is not None
    )
    eps = next(getattr(module, a) for a in ("eps", "variance_epsilon", "epsilon") if hasattr(module, a))
    xf = x.float()
    if centre:
        xf = xf - xf.mean(-1, keepdim=True)
    scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    weight = getattr(module, "weight", None)
    gain = torch.ones(x.shape[-1]) if weight is None else weight.float() + gain_offset

    def apply(h: Tensor) -> Tensor:
        hf = h.float()
        if centre:
            hf = hf - hf.mean(-1, keepdim=True)
        return (hf * _expand(scale, hf) * gain.to(hf.device)).to(h.dtype)

    return apply


def norm_bias(module: nn.Module) -> Tensor | None:
    return getattr(module, "bias", None)


def _expand(scale: Tensor, h: Tensor) -> Tensor:
    """Broadcast a [..., 1] scale over h, which may carry an extra component axis."""
    while scale.dim() < h.dim():
        scale = scale.unsqueeze(-2)
    return scale
