"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per input, ReLU them;
decoder rows unit-norm; AuxK loss: the top `aux_k` dead latents reconstruct the residual
error (coefficient `aux_coeff`, 1/32), which revives dead latents.

Fast path (same values, cheaper): `TopKEncode` computes the dense encoder GEMM (top-k needs
every pre-activation) but its backward touches only the k selected latents per input:
O(batch k d_in) instead of O(batch d_sae d_in). The decoder gathers the k selected rows with
`F.embedding_bag` instead of a dense GEMM. On the CPU the GEMM and the selection run over
row chunks of a few MB, so the [batch, d_sae] pre-activations never exist at once: no large
allocation per step (a fresh array above glibc's mmap threshold, 32 MB, costs a page fault
per 4 KB page, tens of ms per step) and the selection reads a chunk that is still in cache.
The selection itself is `selection.encode_topk` (chunks, tiles, an exact two-stage top-k); the decoder's backward is
`SparseDecode`'s (sparse products only). On the CPU, float32, the selection and both sparse
backwards run native kernels (`kernels.py`, C built at first use; the torch code stays as
the fallback and the reference), and on CPUs that multiply bfloat16 natively the encoder
GEMM runs in bf16 for the selection only (`kernels.encode_topk_bf16`: exact error bounds
and fp32 dots for the candidates give the same top k and the same fp32 values). The loss is
one fused `F.mse_loss` (same value as base.mse), and the decoder-gradient projection is
done in place.

Initialisation: W_enc = c W_dec^T with c = `encoder_init_scale(k, d_sae, d_in)` (< 1; see
there), so that at step 0 the top-k reconstruction has the least-squares right size.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from . import grad_spares, kernels
from .base import SparseCoder, mse, normalized_mse, register
from .selection import encode_topk
from .unit_norm import project_decoder_grad, renormalise_rows

if TYPE_CHECKING:
    from .config import CoderConfig


def encoder_init_scale(k: int, d_sae: int, d_in: int) -> float:
    """Least-squares scale c of W_enc = c W_dec^T at initialisation (random unit rows w_j).

    For any input x (direction u = x/|x|) the projections a_j = u.w_j of random unit rows are
    about N(0, 1/d_in), whatever the distribution of x; top-k keeps the k largest. The
    reconstruction c sum_j (x.w_j) w_j then has a component |x| c A along u (A = sum of the k
    selected a_j^2) and one of squared norm about |x|^2 c^2 (A - Q) across it (Q = sum of the
    a_j^4; the w_j's parts orthogonal to u are nearly orthogonal to each other). The c
    minimising |x - x_hat|^2 is A / (A^2 + A - Q) = 1 / (1 + A - Q/A), with
    A = k m2 / d_in and Q/A = m4 / (m2 d_in), m2 and m4 the mean z^2 and z^4 of the top k of
    d_sae standard normals (taken at mid-rank quantiles). E.g. k 32, d_sae 4096, d_in 256:
    c = 0.52 (on this project's bench activations, the best of a sweep of c and the lowest
    FVU after 5, 10 and 20 steps). With c = 1 the first reconstructions overshoot by about
    1 + A and the first steps are spent shrinking W_enc.
    """
    k = min(k, d_sae)
    z2 = torch.special.ndtri(1 - (torch.arange(k, dtype=torch.float64) + 0.5) / d_sae).pow(2)
    m2, m4 = float(z2.mean()), float(z2.pow(2).mean())
    return 1.0 / (1.0 + k * m2 / d_in - m4 / (m2 * d_in))


class TopKEncode(torch.autograd.Function):
    """(x, W_enc, b_enc, k[, b_dec]) -> relu(top-k of (x - b_dec) W_enc + b_enc) values, indices.

    Backward, with g the incoming gradient of the values times relu' (zero where a selected
    value is <= 0), G the sparse [batch, d_sae] matrix holding g at the selected indices:
    grad b_enc = column sums of G (index_add), grad W_enc = x_c^T G (a sparse product with
    batch k nonzeros, written in W_enc's own [d_in, d_sae] layout: `kernels.scatter_columns`
    on the CPU in float32, else a COO product), grad x = G W_enc^T (an
    embedding_bag over W_enc's columns, only when x needs it) and, when b_dec is passed,
    grad b_dec = -sum_b grad x_b = -W_enc grad b_enc (one matrix-vector product: the batch of
    input gradients is never formed for the bias).
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, b_dec: Tensor | None = None):
        x_c = x - b_dec if b_dec is not None else x
        values, indices = encode_topk(x_c, W_enc, b_enc, k)
        values = values.relu_()
        ctx.centred = b_dec is not None
        ctx.save_for_backward(x_c, W_enc, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices=None):
        x_c, W_enc, values, indices = ctx.saved_tensors
        need_x, need_W, need_b = ctx.needs_input_grad[:3]
        need_bdec = ctx.centred and ctx.needs_input_grad[4]
        g = (grad_values * (values > 0)).to(W_enc.dtype)  # relu'
        n, k = g.shape
        d_sae = W_enc.shape[1]
        flat_idx, flat_g = indices.reshape(-1), g.reshape(-1)
        grad_x = grad_W = grad_b = grad_bdec = None
        if need_b or need_bdec:
            grad_b = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(0, flat_idx, flat_g)
        if need_W:  # x_c^T G, as (G^T x_c)^T
            grad_W = kernels.scatter_columns(indices, g, x_c.to(W_enc.dtype), d_sae, weight=W_enc)
        if need_W and grad_W is None:
            sample = torch.arange(n, device=g.device).repeat_interleave(k)
            G_t = torch.sparse_coo_tensor(torch.stack([flat_idx, sample]), flat_g, (d_sae, n), check_invariants=False)
            grad_W = torch.sparse.mm(G_t, x_c.to(W_enc.dtype)).T.contiguous()
        if need_x:  # sum_j g_bj W_enc[:, idx_bj]
            grad_x = F.embedding_bag(indices, W_enc.T.contiguous(), per_sample_weights=g, mode="sum").to(x_c.dtype)
        if need_bdec:
            grad_bdec = -(W_enc @ grad_b)
        return grad_x, grad_W, grad_b if need_b else None, None, grad_bdec


class SparseDecode(torch.autograd.Function):
    """(values, indices, W_dec, b_dec) -> sum_j values_bj W_dec[indices_bj] + b_dec.

    Forward is one `embedding_bag`. Backward, with e the incoming gradient [batch, d_out]:
    grad values_bj = e_b . W_dec[indices_bj] (a sampled product, batch k dot products),
    grad W_dec = V^T e with V the sparse [batch, d_sae] matrix of the values (rows in W_dec's
    layout), grad b_dec = sum_b e_b: `kernels.decode_backward` on the CPU in float32, else
    `torch.sparse.sampled_addmm` and a COO product. Same values as autograd through
    `embedding_bag`, whose weight gradient costs twice as much on the CPU.
    """

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, W_dec: Tensor, b_dec: Tensor):
        ctx.save_for_backward(values, indices, W_dec)
        return F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum") + b_dec

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, indices, W_dec = ctx.saved_tensors
        (n, k), d_sae = values.shape, W_dec.shape[0]
        grad_out = grad_out.contiguous()
        need_v, need_W = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        native = kernels.decode_backward(indices, values.to(grad_out.dtype), grad_out, W_dec, need_v, need_W)
        grad_v, grad_W = native if native is not None else (None, None)
        grad_b = None
        if need_v and grad_v is None:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": a one-off note, not for users
                warnings.simplefilter("ignore")
                pattern = torch.sparse_csr_tensor(
                    torch.arange(0, n * k + 1, k, device=values.device),
                    indices.reshape(-1),
                    grad_out.new_zeros(n * k),
                    (n, d_sae),
                    check_invariants=False,
                )
            grad_v = torch.sparse.sampled_addmm(pattern, grad_out, W_dec.T, beta=0.0).values().view(n, k)
        if need_W and grad_W is None:
            sample = torch.arange(n, device=values.device).repeat_interleave(k)
            V_t = torch.sparse_coo_tensor(
                torch.stack([indices.reshape(-1), sample]),
                values.reshape(-1).to(grad_out.dtype),
                (d_sae, n),
                check_invariants=False,
            )
            grad_W = torch.sparse.mm(V_t, grad_out)
        if ctx.needs_input_grad[3]:
            grad_b = grad_out.sum(0)
        return grad_v, None, grad_W, grad_b


def sparse_decode(
    values: Float[Tensor, "batch k"],
    indices: Int[Tensor, "batch k"],
    W_dec: Float[Tensor, "d_sae d_out"],
    b_dec: Float[Tensor, " d_out"],
) -> Float[Tensor, "batch d_out"]:
    """sum_j values_bj W_dec[indices_bj] + b_dec, gathering only the selected rows."""
    return SparseDecode.apply(values.to(W_dec.dtype), indices, W_dec, b_dec)


def dense(values: Tensor, indices: Tensor, d_sae: int) -> Float[Tensor, "batch d_sae"]:
    return values.new_zeros(values.shape[0], d_sae).scatter_(1, indices, values)  # in place: no 2nd dense copy


def aux_loss(
    coder: SparseCoder,
    x_c: Tensor,
    x_hat: Tensor,
    target: Tensor,
    dead_mask: Tensor | None,
    *,
    b_dec: Tensor | None = None,
) -> Tensor:
    """AuxK: the top aux_k dead latents (by pre-activation) reconstruct the error target - x_hat
    through the decoder (no bias); normalised MSE; 0 when nothing is dead. With `b_dec` given,
    x_c is the uncentred input and the encoder subtracts b_dec itself (cheaper bias gradient)."""
    if dead_mask is None or not bool(dead_mask.any()):
        return x_c.new_zeros((), dtype=torch.float32)
    dead = dead_mask.to(x_c.device).nonzero()[:, 0]
    # only the dead columns, with the sparse backward (aux_k of them per input carry gradient)
    values, local = TopKEncode.apply(
        x_c, coder.W_enc[:, dead], coder.b_enc[dead], min(coder.cfg.aux_k, len(dead)), b_dec
    )
    error = (target - x_hat).detach()
    error_hat = sparse_decode(values, dead[local], coder.W_dec, torch.zeros_like(coder.b_dec))
    return normalized_mse(error_hat, error).nan_to_num(0.0)


def sparse_acts(
    values: Float[Tensor, "batch k"], indices: Int[Tensor, "batch k"], d_sae: int
) -> Float[Tensor, "batch d_sae"]:
    """The [batch, d_sae] latents as a sparse COO tensor (k entries per row, not coalesced)."""
    n, k = values.shape
    rows = torch.arange(n, device=values.device).repeat_interleave(k)
    return torch.sparse_coo_tensor(
        torch.stack([rows, indices.reshape(-1)]), values.reshape(-1), (n, d_sae), check_invariants=False
    )


class SparseActs:
    """Mixin for coders whose latents come as (values, indices): `with coder.sparse_acts():`
    makes forward's `CoderOutput.acts` a sparse COO tensor with the same values, instead of a
    dense [batch, d_sae] array (the trainer only needs which latents fired; writing
    batch x d_sae zeros every step, and scanning them again, costs more than the backward)."""

    _sparse_acts = False
    if TYPE_CHECKING:  # from the SparseCoder it is mixed into
        cfg: CoderConfig

    @contextmanager
    def sparse_acts(self):
        before = self._sparse_acts
        self._sparse_acts = True
        try:
            yield self
        finally:
            self._sparse_acts = before

    def acts_of(self, values: Tensor, indices: Tensor) -> Tensor:
        return (sparse_acts if self._sparse_acts else dense)(values, indices, self.cfg.d_sae)


def fast_mse(x_hat: Tensor, target: Tensor) -> Tensor:
    """base.mse (squared error summed over features, averaged over the batch) as one fused op."""
    return F.mse_loss(x_hat.float(), target.float(), reduction="sum") / max(1, x_hat.shape[0])


def init_encoder_scale(coder: SparseCoder) -> None:
    """Scale the initial W_enc (= W_dec^T) by `encoder_init_scale` (autoencoders of the topk family)."""
    if coder.autoencoder:
        with torch.no_grad():
            coder.W_enc.mul_(encoder_init_scale(coder.cfg.k, coder.cfg.d_sae, coder.cfg.d_in))


@register
class TopKSAE(SparseActs, SparseCoder):
    ARCH = "topk"
    UNIT_NORM = True
    LAZY_ADAM = True
    fast: bool = True
    """Use the sparse encoder backward and the gathered decoder (same values, cheaper)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        init_encoder_scale(self)

    def activate(self, pre: Tensor) -> Tensor:
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return dense(values.relu(), indices, self.cfg.d_sae)

    def before_step(self, rows: Tensor | None = None) -> None:
        project_decoder_grad(self, rows)

    def after_step(self, rows: Tensor | None = None) -> None:
        renormalise_rows(self, rows)

    def recycle_grads(self) -> None:
        if self.fast:  # the sparse backward writes every entry of both (grad_spares.give_back)
            grad_spares.give_back(self.W_enc, self.W_enc.grad)
            grad_spares.give_back(self.W_dec, self.W_dec.grad)

    def compute(self, xs, ts, dead_mask):
        b_dec = self.b_dec if self.autoencoder else None
        if self.fast:
            values, indices = TopKEncode.apply(xs, self.W_enc, self.b_enc, self.cfg.k, b_dec)
            x_hat = sparse_decode(values, indices, self.W_dec, self.b_dec)
        else:
            values, indices = (self.centered(xs) @ self.W_enc + self.b_enc).topk(self.cfg.k, dim=-1, sorted=False)
            values = values.relu()
            x_hat = self.decode_scaled(dense(values, indices, self.cfg.d_sae))
        loss = fast_mse(x_hat, ts) if self.fast else mse(x_hat, ts)
        parts = {"l0": (values.detach() > 0).sum(-1, dtype=torch.float32).mean(), "mse": loss.detach()}
        if dead_mask is not None:
            parts["aux"] = (
                aux_loss(self, xs, x_hat, ts, dead_mask, b_dec=b_dec)
                if self.fast
                else aux_loss(self, self.centered(xs), x_hat, ts, dead_mask)
            )
            loss = loss + self.cfg.aux_coeff * parts["aux"]
        return x_hat, self.acts_of(values, indices), loss, parts
