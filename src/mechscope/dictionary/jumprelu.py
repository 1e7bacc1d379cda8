"""JumpReLU SAE (Rajamanoharan et al. 2024b): acts = pre * 1[pre > theta] with a learned
per-latent threshold theta = exp(log_threshold), trained with an L0 penalty. The step has no
gradient wrt theta; straight-through estimators with a rectangle kernel
K(u) = 1[|u| < 1/2] of width eps = `bandwidth` supply pseudo-gradients:

    d JumpReLU / d theta = -(theta / eps) K((pre - theta) / eps)
    d H(pre - theta) / d theta = -(1 / eps) K((pre - theta) / eps)

loss = |x - x_hat|^2 + l0_coeff * sum_i 1[pre_i > theta_i]. Decoder rows are kept unit-norm.

Initialisation: W_enc = c W_dec^T with c the least-squares scale of `topk.encoder_init_scale`
for d_sae / 2 active latents, what a threshold near 0 (the paper's 1e-3) opens at the start.
At c = 1 the first reconstructions are ~d_sae / (2 d_in) times too long; Adam then drives
b_enc and b_dec hard in the first steps and latents that fall below their threshold get no
gradient again. A good init_threshold is then c sqrt(l0_coeff): one unit decoder row is worth
firing when (x.d)^2 > l0_coeff. Planted-dictionary recovery (tests/dictionary, l0_coeff 6e-2,
bandwidth 0.05, lr 1e-2, Adam beta1 = 0, 1000 steps): 0.64 from c = 1 (threshold
sqrt(l0_coeff)), 0.87 from this c; with input_norm="layer_norm" (each input standardised, the
settings rescaled to those units: l0_coeff 2.25, bandwidth 0.3) 0.95 in 500 steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import SparseCoder, mse, register
from .topk import encoder_init_scale


def _kernel(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    return ((pre - theta).abs() < eps / 2).to(pre.dtype) / eps


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        grad_pre = grad * (pre > theta)
        grad_theta = (-(theta / ctx.eps) * ((pre - theta).abs() < ctx.eps / 2) * grad).sum(0)
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        return None, (-_kernel(pre, theta, ctx.eps) * grad).sum(0), None


@register
class JumpReluSAE(SparseCoder):
    ARCH = "jumprelu"
    UNIT_NORM = True

    def __init__(self, cfg):
        super().__init__(cfg)
        if self.autoencoder:
            with torch.no_grad():
                self.W_enc.mul_(encoder_init_scale(cfg.d_sae // 2, cfg.d_sae, cfg.d_in))
        self.log_threshold = nn.Parameter(
            torch.full((cfg.d_sae,), math.log(cfg.init_threshold), dtype=self.W_enc.dtype)
        )

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def activate(self, pre: Tensor) -> Tensor:
        return pre * (pre > self.threshold)

    def compute(self, xs, ts, dead_mask):
        pre = self.centered(xs) @ self.W_enc + self.b_enc
        theta = self.threshold
        acts = _JumpReLU.apply(pre, theta, self.cfg.bandwidth)
        x_hat = self.decode_scaled(acts)
        l0 = _Step.apply(pre, theta, self.cfg.bandwidth).sum(-1).mean()
        return x_hat, acts, mse(x_hat, ts) + self.cfg.l0_coeff * l0, {"l0_penalty": l0}
