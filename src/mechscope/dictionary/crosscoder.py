"""Sparse crosscoders (Lindsey et al. 2024, "Sparse Crosscoders for Cross-Layer Features
and Model Diffing"): one dictionary over several sites at once.

The input is the concatenation of n equal-width blocks, one per entry of `cfg.blocks`
(layers of one model, or the same site of two models for diffing): x = [x_1 | ... | x_n],
d_in = n * d. Each latent has one encoder and one decoder vector per block; its decoder
row W_dec[i] splits into n per-block decoders d_{i,b} (each d wide).

Loss (in the normalised space, see below):

    |x - x_hat|^2 + l1_coeff * sum_i f_i * sum_b |d_{i,b}|

The penalty is the L1 norm over blocks of the per-block decoder norms (the paper's
choice), not the norm of the whole concatenated row. Why: a latent that writes to one
block pays exactly what a latent of a single-site ReLU SAE pays, so with single-block
latents the loss is the sum of n per-site SAE losses and the coefficients of the two are
comparable; and because a latent pays separately for every block it writes to (n times
for a latent spread evenly, against sqrt(n) with the concatenated norm), the penalty
pushes each latent's decoder mass onto the blocks where it is needed, so the per-block
norms |d_{i,b}| (`block_norms`) say where a latent lives, which model diffing reads.

Normalisation, as the paper does it: each block is scaled separately so that its mean
norm is sqrt(d) (a site with large activations would otherwise dominate the loss). The
per-block factor is `cfg.norm_scale * block_scale[b]`; the trainer sets norm_scale from
the whole input and `init_from_data` sets `block_scale` so that the product is each
block's own sqrt(d) / mean norm. `fold_norm_scale()` (what training returns and saves)
folds both into the weights — the artifact maps raw activations with no scale applied —
and records the folded factors in `folded_scale`, so `block_norms()` still reports norms
in the normalised space the latents were trained in.

Variants:
- `Crosscoder` ("crosscoder", acausal): every latent reads all blocks and writes all blocks.
- `WeaklyCausalCrosscoder` ("weakly_causal_crosscoder"): blocks are layers of one model
  in forward order. Latent i has a source block s(i) = floor(i * n / d_sae) (the latents
  are split into n contiguous, near-equal groups); it reads only block s(i) and writes
  only blocks s(i), s(i)+1, ..., n-1. Enforced as fixed masks on W_enc and W_dec: masked
  weights are zero at init, their gradients are zeroed before each step and the weights
  re-zeroed after it, so they stay exactly zero through training and saving.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import MechscopeError
from .base import CoderOutput, mse, register
from .relu import ReluSAE


@register
class Crosscoder(ReluSAE):
    """Acausal crosscoder: a ReLU dictionary over n concatenated site blocks."""

    ARCH = "crosscoder"
    block_scale: Tensor  # buffers (register_buffer in __init__)
    folded_scale: Tensor

    def __init__(self, cfg):
        n = len(cfg.blocks)
        if n == 0:
            raise MechscopeError(
                f"a {cfg.arch} needs cfg.blocks: the sites it reads, in order (e.g. "
                "('blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'))"
            )
        if len(set(cfg.blocks)) != n:
            raise MechscopeError(f"crosscoder blocks must be distinct, got {cfg.blocks}")
        if cfg.d_out is not None:
            raise MechscopeError("a crosscoder reconstructs its own input: leave d_out unset")
        if cfg.d_in % n:
            raise MechscopeError(
                f"crosscoder d_in={cfg.d_in} is not {n} equal blocks: sites of different widths "
                "need a declared projection to a common width (see StackedSource)"
            )
        super().__init__(cfg)
        self.register_buffer("block_scale", torch.ones(n))
        self.register_buffer("folded_scale", torch.ones(n))

    @property
    def n_blocks(self) -> int:
        return len(self.cfg.blocks)

    @property
    def d_block(self) -> int:
        return self.cfg.d_in // self.n_blocks

    def block_index(self, block: str | int) -> int:
        """Position of a block given by name or index."""
        if isinstance(block, int):
            if not 0 <= block < self.n_blocks:
                raise MechscopeError(f"block {block} is out of range: this crosscoder has {self.n_blocks} blocks")
            return block
        if block not in self.cfg.blocks:
            raise MechscopeError(f"'{block}' is not a block of this crosscoder (it reads {', '.join(self.cfg.blocks)})")
        return self.cfg.blocks.index(block)

    # Scales: one factor per block

    def _scale_vector(self) -> Float[Tensor, " d_in"]:
        return (self.block_scale * self.cfg.norm_scale).repeat_interleave(self.d_block).to(self.W_enc.dtype)

    def scaled(self, x: Tensor, stats=None) -> Tensor:
        return x.to(self.W_enc.dtype) * self._scale_vector()

    def unscaled(self, y: Tensor, stats=None) -> Tensor:
        return y / self._scale_vector().to(y.dtype)

    def forward(
        self,
        x: Float[Tensor, "batch d_in"],
        *,
        dead_mask: Bool[Tensor, " d_sae"] | None = None,
        target: Tensor | None = None,
    ) -> CoderOutput:
        if target is not None:
            raise MechscopeError("a crosscoder reconstructs its own input: call it without target")
        self._check(x)
        xs = self.scaled(x)
        x_hat_s, acts, loss, parts = self.compute(xs, xs, dead_mask)
        parts["l0"] = (acts.detach() != 0).sum(-1, dtype=torch.float32).mean()
        parts = {"mse": mse(x_hat_s, xs).detach(), **{k: v.detach() for k, v in parts.items()}}
        return CoderOutput(self.unscaled(x_hat_s), acts, loss, parts)

    # The penalty

    def _block_norms(self) -> Float[Tensor, "d_sae n_blocks"]:
        return self.W_dec.view(self.cfg.d_sae, self.n_blocks, self.d_block).norm(dim=-1)

    def compute(self, xs, ts, dead_mask):
        acts = self.activate(self.centered(xs) @ self.W_enc + self.b_enc)
        x_hat = self.decode_scaled(acts)
        l1 = (acts * self._block_norms().sum(-1)).sum(-1).mean()
        return x_hat, acts, mse(x_hat, ts) + self.cfg.l1_coeff * l1, {"l1": l1}

    @torch.no_grad()
    def block_norms(self) -> Float[Tensor, "d_sae n_blocks"]:
        """|d_{i,b}|: each latent's decoder norm per block, in the normalised training space
        (comparable across blocks whatever the raw scale of each site)."""
        return (self._block_norms().float() * self.folded_scale.float()).cpu()

    # Scale estimation and folding

    @torch.no_grad()
    def init_from_data(self, x_sample: Float[Tensor, "n d_in"], target: Tensor | None = None) -> None:
        """Per-block scales (each block to mean norm sqrt(d)), then b_dec at the geometric median."""
        blocks = x_sample.reshape(-1, self.n_blocks, self.d_block).float()
        mean_norm = blocks.norm(dim=-1).mean(0)
        if not bool(torch.isfinite(mean_norm).all()) or bool((mean_norm <= 0).any()):
            raise MechscopeError(
                f"a crosscoder block has mean norm {mean_norm.tolist()}: cannot normalise it "
                "(is a site constant zero, or are there NaNs upstream?)"
            )
        per_block = math.sqrt(self.d_block) / mean_norm
        self.block_scale.copy_((per_block / self.cfg.norm_scale).to(self.block_scale))
        super().init_from_data(x_sample, target)

    def fold_rules(self, s: float) -> dict[str, Tensor]:
        # (S x - b_dec) W_enc = (x - b_dec / S) (diag(S) W_enc); (acts W_dec + b_dec) / S, column-wise
        factor = self.block_scale.detach() * s
        vec = factor.repeat_interleave(self.d_block).to(self.W_enc.dtype)
        return {
            "W_enc": self.W_enc.detach() * vec[:, None],
            "W_dec": self.W_dec.detach() / vec,
            "b_dec": self.b_dec.detach() / vec,
            "block_scale": torch.ones_like(self.block_scale),
            "folded_scale": self.folded_scale.detach() * factor,
        }

    def site_direction(self, feature: int, block: str | int) -> Float[Tensor, " d_block"]:
        """Unit decoder vector of one latent in one block (raw space), for steering that site."""
        self.direction(feature)  # range check
        b = self.block_index(block)
        row = self.W_dec[feature, b * self.d_block : (b + 1) * self.d_block].detach().float()
        return row / row.norm().clamp_min(1e-12)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", blocks={list(self.cfg.blocks)}"


@register
class WeaklyCausalCrosscoder(Crosscoder):
    """Latent i reads block s(i) only and writes blocks s(i)..n-1 (see the module docstring)."""

    ARCH = "weakly_causal_crosscoder"
    enc_mask: Tensor  # buffers (register_buffer in __init__)
    dec_mask: Tensor

    def __init__(self, cfg):
        super().__init__(cfg)
        models = {b.rsplit(":", 1)[0] for b in cfg.blocks if ":" in b}
        if len(models) > 1:
            raise MechscopeError(
                f"a weakly causal crosscoder reads layers of one model in forward order; blocks "
                f"{cfg.blocks} come from several models: use the acausal 'crosscoder' to diff models"
            )
        if cfg.d_sae < self.n_blocks:
            raise MechscopeError(
                f"d_sae={cfg.d_sae} is smaller than the {self.n_blocks} blocks: every block needs latents"
            )
        src, blk = self.sources(), torch.arange(cfg.d_in) // self.d_block
        self.register_buffer("enc_mask", blk[:, None] == src[None, :], persistent=False)  # [d_in, d_sae]
        self.register_buffer("dec_mask", blk[None, :] >= src[:, None], persistent=False)  # [d_sae, d_in]
        self._apply_masks()

    def sources(self) -> Tensor:
        """s(i) = floor(i * n / d_sae): the block each latent reads (and the first it writes)."""
        return torch.arange(self.cfg.d_sae) * self.n_blocks // self.cfg.d_sae

    @torch.no_grad()
    def _apply_masks(self) -> None:
        self.W_enc.mul_(self.enc_mask.to(self.W_enc.dtype))
        self.W_dec.mul_(self.dec_mask.to(self.W_dec.dtype))

    @torch.no_grad()
    def before_step(self, rows: Tensor | None = None) -> None:
        super().before_step(rows)
        for w, m in ((self.W_enc, self.enc_mask), (self.W_dec, self.dec_mask)):
            if w.grad is not None:
                w.grad.mul_(m.to(w.grad.dtype))

    @torch.no_grad()
    def after_step(self, rows: Tensor | None = None) -> None:
        super().after_step(rows)
        self._apply_masks()


@torch.no_grad()
def block_metrics(coder: Crosscoder, x: Float[Tensor, "tokens d_in"], batch_size: int = 4096) -> dict:
    """Held-out reconstruction per block: FVU of each block (Σ‖x_b − x̂_b‖² / Σ‖x_b − mean‖²),
    overall FVU, L0 and the dead fraction (latents that never fired on x)."""
    n, d = coder.n_blocks, coder.d_block
    x = x.reshape(-1, coder.cfg.d_in).float()
    err, l0, fired = torch.zeros(n, dtype=torch.float64), 0.0, torch.zeros(coder.cfg.d_sae, dtype=torch.bool)
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size].to(coder.W_enc.device)
        acts = coder.encode(chunk)
        err += (coder.decode(acts, x=chunk).float() - chunk).pow(2).view(-1, n, d).sum((0, 2)).double().cpu()
        l0 += float((acts != 0).sum())
        fired |= (acts != 0).any(0).cpu()
    var = (x - x.mean(0)).pow(2).view(-1, n, d).sum((0, 2)).double().clamp_min(1e-30)
    return {
        "fvu": float(err.sum() / var.sum()),
        "fvu_per_block": dict(zip(coder.cfg.blocks, (err / var).tolist())),
        "l0": l0 / max(len(x), 1),
        "dead_fraction": float((~fired).float().mean()),
        "n_tokens": len(x),
    }
