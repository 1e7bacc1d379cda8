"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; Nabeshima 2024): BatchTopK latents, and
the reconstruction loss is the sum over nested prefixes m of |x - (acts[:, :m] W_dec[:m] + b_dec)|^2,
so the first latents must reconstruct on their own (general features early, specific later)."""

from __future__ import annotations

from torch import Tensor

from .base import mse, register
from .batchtopk import BatchTopKSAE


@register
class MatryoshkaSAE(BatchTopKSAE):
    ARCH = "matryoshka"

    @property
    def prefixes(self) -> tuple[int, ...]:
        return self.cfg.prefixes or (self.cfg.d_sae,)

    def reconstruction(self, acts: Tensor, ts: Tensor) -> tuple[Tensor, dict]:
        # running partial sums: prefix m adds the block acts[:, prev:m] @ W_dec[prev:m]
        partial, prev, parts = self.b_dec.expand(acts.shape[0], -1), 0, {}
        total: Tensor | float = 0.0
        for m in self.prefixes:
            partial = partial + acts[:, prev:m].to(self.W_dec.dtype) @ self.W_dec[prev:m]
            term = mse(partial, ts)
            parts[f"mse_{m}"] = term
            total, prev = total + term, m
        assert isinstance(total, Tensor)  # `prefixes` is never empty
        return total, parts
