"""Geometric median by Weiszfeld's iterations: the point minimising the sum of Euclidean
distances to the samples; robust to outliers, used to initialise b_dec."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


@torch.no_grad()
def geometric_median(
    x: Float[Tensor, "n d"], *, iters: int = 100, tol: float = 1e-6, eps: float = 1e-8
) -> Float[Tensor, " d"]:
    """y <- sum_i w_i x_i / sum_i w_i with w_i = 1 / max(|x_i - y|, eps), from the mean."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=-1).clamp_min(eps)
        new = (w[:, None] * x).sum(0) / w.sum()
        moved = (new - y).norm()
        y = new
        if moved <= tol * max(float(y.norm()), 1.0):
            break
    return y


@torch.no_grad()
def mean_norm_scale(x: Float[Tensor, "n d"]) -> float:
    """The factor that makes the mean activation norm sqrt(d) (the `norm_scale` convention)."""
    return float(x.shape[-1] ** 0.5 / x.float().norm(dim=-1).mean().clamp_min(1e-12))
