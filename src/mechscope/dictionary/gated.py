"""Gated SAE (Rajamanoharan et al. 2024): a gate path decides which latents fire, a
magnitude path how strongly; both share W_enc, the magnitude path rescaled per latent:

    pi_gate = x_c W_enc + b_gate          f_gate = 1[pi_gate > 0]
    pi_mag  = x_c (W_enc * exp(r_mag)) + b_mag
    acts    = f_gate * relu(pi_mag)

loss = |x - x_hat|^2 + l1_coeff * sum_i relu(pi_gate)_i |W_dec_i|
       + |x - (relu(pi_gate) W_dec^frozen + b_dec^frozen)|^2   (auxiliary, frozen decoder)

`b_enc` is the gate bias (SAELens calls it b_gate). Folding an input scale s into W_enc
scales both paths alike; r_mag, b_mag and b_enc are unchanged."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SparseCoder, mse, register


@register
class GatedSAE(SparseCoder):
    ARCH = "gated"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=self.W_enc.dtype))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=self.W_enc.dtype))

    def paths(self, x_c: Tensor) -> tuple[Tensor, Tensor]:
        """(pi_gate, pi_mag)."""
        proj = x_c @ self.W_enc
        return proj + self.b_enc, proj * self.r_mag.exp() + self.b_mag

    def pre_acts(self, x: Tensor) -> Tensor:
        """The gate pre-activation."""
        self._check(x)
        return self.paths(self.centered(self.scaled(x)))[0]

    def encode(self, x: Tensor) -> Tensor:
        self._check(x)
        lead = x.shape[:-1]
        gate, mag = self.paths(self.centered(self.scaled(x.reshape(-1, x.shape[-1]))))
        return ((gate > 0) * mag.relu()).reshape(*lead, self.cfg.d_sae)

    def compute(self, xs, ts, dead_mask):
        gate, mag = self.paths(self.centered(xs))
        acts = (gate > 0) * mag.relu()
        x_hat = self.decode_scaled(acts)
        gate_relu = gate.relu()
        l1 = (gate_relu * self.W_dec.norm(dim=-1)).sum(-1).mean()
        gate_aux = mse(gate_relu @ self.W_dec.detach() + self.b_dec.detach(), ts)
        loss = mse(x_hat, ts) + self.cfg.l1_coeff * l1 + gate_aux
        return x_hat, acts, loss, {"l1": l1, "gate_aux": gate_aux}

