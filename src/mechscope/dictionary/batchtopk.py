"""BatchTopK SAE (Bussmann et al. 2024): in training keep the k * batch largest
activations over the whole flattened batch (a variable number per input, k on average);
at inference use a learned global threshold theta — a running mean of the smallest
positive kept activation — so each input is encoded on its own: acts = relu(pre) * (pre > theta).
Decoder rows unit-norm; AuxK as in TopK.

One threshold for the whole batch favours inputs with large norms. The reference code
standardises each input (input_unit_norm; here `CoderConfig.input_norm="layer_norm"`): on the
planted-dictionary test, where an input's norm grows with its atom count, that takes recovery
from 0.64 to 0.93 (tests/dictionary/test_architectures.py)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from .base import SparseCoder, mse, register
from .topk import aux_loss, init_encoder_scale
from .unit_norm import project_decoder_grad, renormalise_rows

log = logging.getLogger(__name__)


def batch_topk(pre: Tensor, k: int) -> Tensor:
    """relu(pre) keeping only the k * batch largest entries of the batch."""
    acts = pre.relu()
    flat = acts.reshape(-1)
    values, indices = flat.topk(min(k * acts.shape[0], flat.numel()), sorted=False)
    return torch.zeros_like(flat).scatter(0, indices, values).reshape(acts.shape)


@register
class BatchTopKSAE(SparseCoder):
    ARCH = "batchtopk"
    LAZY_ADAM = True
    UNIT_NORM = True
    threshold: Tensor  # buffer (register_buffer in __init__)

    def __init__(self, cfg):
        super().__init__(cfg)
        init_encoder_scale(self)  # k active on average: the same least-squares start as TopK
        self.register_buffer("threshold", torch.tensor(-1.0))
        """Inference threshold theta; negative until the first training batch sets it."""

    def activate(self, pre: Tensor) -> Tensor:
        if self.training:
            return batch_topk(pre, self.cfg.k)
        if float(self.threshold) < 0:
            log.warning("batchtopk: no inference threshold learned yet; using per-input top-k")
            values, indices = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, indices, values.relu())
        return pre.relu() * (pre > self.threshold.to(pre.dtype))

    def before_step(self, rows: Tensor | None = None) -> None:
        project_decoder_grad(self, rows)

    def after_step(self, rows: Tensor | None = None) -> None:
        renormalise_rows(self, rows)

    @torch.no_grad()
    def update_threshold(self, acts: Tensor) -> None:
        positive = acts[acts > 0]
        if positive.numel() == 0:
            return
        low = positive.min().float()
        m = self.cfg.threshold_momentum
        self.threshold.copy_(low if float(self.threshold) < 0 else m * self.threshold + (1 - m) * low)

    def compute(self, xs, ts, dead_mask):
        x_c = self.centered(xs)
        acts = self.activate(x_c @ self.W_enc + self.b_enc)
        if self.training:
            self.update_threshold(acts)
        x_hat = self.decode_scaled(acts)
        loss, parts = self.reconstruction(acts, ts)
        if dead_mask is not None:
            parts["aux"] = aux_loss(self, x_c, x_hat, ts, dead_mask)
            loss = loss + self.cfg.aux_coeff * parts["aux"]
        return x_hat, acts, loss, parts

    def reconstruction(self, acts: Tensor, ts: Tensor) -> tuple[Tensor, dict]:
        """The reconstruction loss (Matryoshka overrides it with nested prefixes)."""
        return mse(self.decode_scaled(acts), ts), {}
