"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per input, ReLU them;
decoder rows unit-norm; AuxK loss: the top `aux_k` dead latents reconstruct the residual
error (coefficient `aux_coeff`, 1/32), which revives dead latents.

Fast path: `TopKEncode` computes the dense encoder GEMM, but its backward touches only the
k selected latents per input (O(batch k d_in) instead of O(batch d_sae d_in)), and the
decoder gathers the k selected rows with `F.embedding_bag` instead of a dense GEMM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from .base import SparseCoder, mse, normalized_mse, register


class TopKEncode(torch.autograd.Function):
    """(x_c, W_enc, b_enc, k) -> relu(top-k values), indices; sparse backward."""

    @staticmethod
    def forward(ctx, x_c: Tensor, W_enc: Tensor, b_enc: Tensor, k: int):
        pre = torch.addmm(b_enc, x_c, W_enc)
        values, indices = pre.topk(k, dim=-1, sorted=False)
        values = values.relu()
        ctx.save_for_backward(x_c, W_enc, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices=None):
        x_c, W_enc, values, indices = ctx.saved_tensors
        g = grad_values * (values > 0)                                  # ReLU
        flat_idx = indices.reshape(-1)
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:                                     # sum_j g_bj W_enc[:, idx_bj]
            rows_of_W = W_enc.T.contiguous()                            # [d_sae, d_in]: gather whole rows
            grad_x = F.embedding_bag(indices, rows_of_W, per_sample_weights=g.to(W_enc.dtype), mode="sum")
        if ctx.needs_input_grad[1]:                                     # column idx_bj += g_bj x_b
            rows = (g[..., None] * x_c[:, None, :]).reshape(-1, x_c.shape[-1]).to(W_enc.dtype)
            grad_W = W_enc.new_zeros(W_enc.shape[1], W_enc.shape[0]).index_add_(0, flat_idx, rows).T
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(W_enc.shape[1], dtype=g.dtype, device=g.device).index_add_(0, flat_idx, g.reshape(-1))
        return grad_x, grad_W, grad_b, None


def sparse_decode(values: Float[Tensor, "batch k"], indices: Int[Tensor, "batch k"],
                  W_dec: Float[Tensor, "d_sae d_out"], b_dec: Float[Tensor, "d_out"]) -> Float[Tensor, "batch d_out"]:
    """sum_j values_bj W_dec[indices_bj] + b_dec, gathering only the selected rows."""
    return F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum") + b_dec


def dense(values: Tensor, indices: Tensor, d_sae: int) -> Float[Tensor, "batch d_sae"]:
    return values.new_zeros(values.shape[0], d_sae).scatter_(1, indices, values)  # in place: no 2nd dense copy


def aux_loss(coder: SparseCoder, x_c: Tensor, x_hat: Tensor, target: Tensor, dead_mask: Tensor | None) -> Tensor:
    """AuxK: the top aux_k dead latents (by pre-activation) reconstruct the error target - x_hat
    through the decoder (no bias); normalised MSE; 0 when nothing is dead."""
    if dead_mask is None or not bool(dead_mask.any()):
        return x_c.new_zeros((), dtype=torch.float32)
    dead = dead_mask.to(x_c.device).nonzero()[:, 0]
    pre = x_c @ coder.W_enc[:, dead] + coder.b_enc[dead]               # only the dead columns
    values, local = pre.topk(min(coder.cfg.aux_k, len(dead)), dim=-1, sorted=False)
    error = (target - x_hat).detach()
    error_hat = sparse_decode(values.relu(), dead[local], coder.W_dec, torch.zeros_like(coder.b_dec))
    return normalized_mse(error_hat, error).nan_to_num(0.0)


@register
class TopKSAE(SparseCoder):
    ARCH = "topk"
    UNIT_NORM = True
    fast: bool = True
    """Use the sparse encoder backward and the gathered decoder (same values, cheaper)."""

    def activate(self, pre: Tensor) -> Tensor:
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return dense(values.relu(), indices, self.cfg.d_sae)

    def select(self, x_c: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(values, indices, dense pre-activations or None) of the k selected latents."""
        if self.fast:
            values, indices = TopKEncode.apply(x_c, self.W_enc, self.b_enc, self.cfg.k)
            return values, indices, None
        pre = x_c @ self.W_enc + self.b_enc
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return values.relu(), indices, pre

    def compute(self, xs, ts, dead_mask):
        x_c = self.centered(xs)
        values, indices, _ = self.select(x_c)
        if self.fast:
            x_hat = sparse_decode(values, indices, self.W_dec, self.b_dec)
        else:
            x_hat = self.decode_scaled(dense(values, indices, self.cfg.d_sae))
        acts = dense(values, indices, self.cfg.d_sae)
        loss, parts = mse(x_hat, ts), {"l0": (values.detach() > 0).sum(-1, dtype=torch.float32).mean()}
        if dead_mask is not None:
            parts["aux"] = aux_loss(self, x_c, x_hat, ts, dead_mask)
            loss = loss + self.cfg.aux_coeff * parts["aux"]
        return x_hat, acts, loss, parts

