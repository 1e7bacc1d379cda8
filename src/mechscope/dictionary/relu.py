"""ReLU SAE with an L1 penalty weighted by decoder row norms (Anthropic, April 2024 update):
loss = |x - x_hat|^2 + l1_coeff * sum_i f_i |W_dec_i|. The norm sits in the penalty, so the
decoder is left unconstrained (rows start at norm 0.1)."""

from __future__ import annotations

from .base import SparseCoder, mse, register


@register
class ReluSAE(SparseCoder):
    ARCH = "relu"

    def init_row_norm(self) -> float:
        return 0.1

    def activate(self, pre):
        return pre.relu()

    def compute(self, xs, ts, dead_mask):
        acts = self.activate(self.centered(xs) @ self.W_enc + self.b_enc)
        x_hat = self.decode_scaled(acts)
        l1 = (acts * self.W_dec.norm(dim=-1)).sum(-1).mean()
        return x_hat, acts, mse(x_hat, ts) + self.cfg.l1_coeff * l1, {"l1": l1}
