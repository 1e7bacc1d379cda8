"""Gated SAE (Rajamanoharan et al. 2024): a gate path decides which latents fire, a
magnitude path how strongly; both share W_enc, the magnitude path rescaled per latent:

    pi_gate = x_c W_enc + b_gate          f_gate = 1[pi_gate > 0]
    pi_mag  = x_c (W_enc * exp(r_mag)) + b_mag
    acts    = f_gate * relu(pi_mag)

loss = |x - x_hat|^2 + l1_coeff * sum_i relu(pi_gate)_i |W_dec_i|
       + |x - (relu(pi_gate) W_dec^frozen + b_dec^frozen)|^2   (auxiliary, frozen decoder)

Decoder rows are kept unit-norm (the constraint of the paper's baselines; SAELens instead
leaves them free and weights the penalty by their norms, the |W_dec_i| factor kept here).
Free, the penalty's gradient shrinks the rows (measured: to ~0.1) while exp(r_mag) and W_enc
grow to compensate, and learning stalls.

Initialisation (the paper starts from W_enc = W_dec^T, b_gate = 0, which suits its small
learning rates): W_enc = c W_dec^T with c the least-squares scale of `topk.encoder_init_scale`
for about d_sae / 2 open gates, and b_gate = -c l1_coeff / 2. At c = 1 the first
reconstructions (main and auxiliary) are ~d_sae / (2 d_in) times too long; at b_gate = 0 the
L1 term outweighs the auxiliary one. Either way Adam shuts most gates in the first steps, and
a shut gate gets no gradient again. -l1_coeff / 2 is where the auxiliary path settles: for one
unit decoder row, min_a (x.d - a)^2 + l1_coeff a over a >= 0 gives a = x.d - l1_coeff / 2, a
soft threshold (times c in encoder units).

Planted-dictionary recovery (tests/dictionary, l1_coeff 0.6, lr 5e-3, 800 steps, seeds 0/1):
0.94/0.94; with b_gate = 0 0.86/0.86; with c = 1 0.77/0.78; with free decoder norms
0.78/0.79; with none of the three (the paper's init, free norms) 0.52/0.51.

`b_enc` is the gate bias (SAELens calls it b_gate). Folding an input scale s into W_enc
scales both paths alike; r_mag, b_mag and b_enc are unchanged."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SparseCoder, mse, register
from .topk import encoder_init_scale
from .unit_norm import project_decoder_grad


@register
class GatedSAE(SparseCoder):
    ARCH = "gated"
    UNIT_NORM = True

    def __init__(self, cfg):
        super().__init__(cfg)
        if self.autoencoder:
            c = encoder_init_scale(cfg.d_sae // 2, cfg.d_sae, cfg.d_in)
            with torch.no_grad():
                self.W_enc.mul_(c)
                self.b_enc.fill_(-c * cfg.l1_coeff / 2)
        self.r_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=self.W_enc.dtype))
        self.b_mag = nn.Parameter(torch.zeros(cfg.d_sae, dtype=self.W_enc.dtype))

    def before_step(self, rows: Tensor | None = None) -> None:
        project_decoder_grad(self, rows)

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
