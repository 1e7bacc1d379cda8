"""Switch SAE (Mudide et al. 2024): a router (linear + softmax over `n_experts`) sends each
input to one expert dictionary of d_sae / n_experts latents; TopK inside that expert. The
expert's output is scaled by its router probability p so the router receives gradient:

    x_hat = p_e * TopK(x_c W_enc[:, e] + b_enc[e]) W_dec[e] + b_dec

Load balancing: balance_coeff * n_experts * sum_i f_i P_i, f_i the fraction of inputs routed
to expert i, P_i its mean router probability. Latents are reported with p_e folded in, so
decode(encode(x)) == x_hat. Decoder rows unit-norm; AuxK over dead latents as in TopK."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import SparseCoder, mse, register
from .topk import aux_loss, dense, sparse_decode


@register
class SwitchSAE(SparseCoder):
    ARCH = "switch"
    UNIT_NORM = True

    def __init__(self, cfg):
        super().__init__(cfg)
        dtype = self.W_enc.dtype
        self.W_router = nn.Parameter(torch.randn(cfg.d_in, cfg.n_experts, dtype=dtype) / cfg.d_in**0.5 * 0.1)
        self.b_router = nn.Parameter(torch.zeros(cfg.n_experts, dtype=dtype))

    @property
    def expert_size(self) -> int:
        return self.cfg.d_sae // self.cfg.n_experts

    def route(self, x_c: Tensor) -> tuple[Tensor, Tensor]:
        """(router probabilities [batch, n_experts], chosen expert [batch])."""
        probs = (x_c @ self.W_router + self.b_router).float().softmax(-1)
        return probs, probs.argmax(-1)

    def select(self, x_c: Tensor, expert: Tensor) -> tuple[Tensor, Tensor]:
        """(values [batch, k], global latent indices [batch, k]): top-k inside each input's expert."""
        m, k = self.expert_size, self.cfg.k
        values = x_c.new_zeros(x_c.shape[0], k)
        indices = torch.zeros(x_c.shape[0], k, dtype=torch.long, device=x_c.device)
        for e in expert.unique().tolist():
            rows = (expert == e).nonzero()[:, 0]
            pre = x_c[rows] @ self.W_enc[:, e * m : (e + 1) * m] + self.b_enc[e * m : (e + 1) * m]
            v, local = pre.topk(k, dim=-1, sorted=False)
            values = values.index_copy(0, rows, v.relu())
            indices = indices.index_copy(0, rows, local + e * m)
        return values, indices

    def fold_rules(self, s: float) -> dict[str, Tensor]:
        return {**super().fold_rules(s), "W_router": self.W_router.detach() * s}  # the router reads x_c too

    def encode(self, x: Tensor) -> Tensor:
        self._check(x)
        lead = x.shape[:-1]
        x_c = self.centered(self.scaled(x.reshape(-1, x.shape[-1])))
        probs, expert = self.route(x_c)
        values, indices = self.select(x_c, expert)
        values = values * probs.gather(1, expert[:, None]).to(x_c.dtype)
        return dense(values, indices, self.cfg.d_sae).reshape(*lead, self.cfg.d_sae)

    def compute(self, xs, ts, dead_mask):
        x_c = self.centered(xs)
        probs, expert = self.route(x_c)
        values, indices = self.select(x_c, expert)
        values = values * probs.gather(1, expert[:, None]).to(x_c.dtype)  # p_e: the router's gradient path
        acts = dense(values, indices, self.cfg.d_sae)
        x_hat = sparse_decode(values, indices, self.W_dec, self.b_dec)
        n = self.cfg.n_experts
        f = torch.bincount(expert, minlength=n).float() / len(expert)
        balance = n * (f * probs.mean(0)).sum()
        loss = mse(x_hat, ts) + self.cfg.balance_coeff * balance
        parts = {"balance": balance, "l0": (values.detach() > 0).sum(-1, dtype=torch.float32).mean()}
        if dead_mask is not None:
            parts["aux"] = aux_loss(self, x_c, x_hat, ts, dead_mask)
            loss = loss + self.cfg.aux_coeff * parts["aux"]
        return x_hat, acts, loss, parts
