"""A known dictionary and a tiny Adam loop, shared by the dictionary tests."""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.dictionary import CoderConfig, build

D, N_ATOMS, ACTIVE = 64, 512, 5


ATOM_SEED_OFFSET = 12_345
"""The atoms' generator must not replay the stream that initialises the dictionary: with the
same seed the first decoder rows would start equal to the atoms (recovery 1.0 untrained)."""


def atoms(seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed + ATOM_SEED_OFFSET)
    a = torch.randn(N_ATOMS, D, generator=gen)
    return a / a.norm(dim=-1, keepdim=True)


def sample(dictionary: Tensor, n: int, gen: torch.Generator, noise: float = 0.01) -> Tensor:
    """x = sum of ~ACTIVE atoms with uniform [0, 1] coefficients, plus Gaussian noise."""
    on = torch.rand(n, N_ATOMS, generator=gen) < ACTIVE / N_ATOMS
    coeff = torch.rand(n, N_ATOMS, generator=gen) * on
    return coeff @ dictionary + noise * torch.randn(n, D, generator=gen)


def recovery(decoder: Tensor, dictionary: Tensor) -> float:
    """Mean over true atoms of the best |cosine| with a learned decoder row."""
    rows = decoder / decoder.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return float((dictionary @ rows.T).max(-1).values.mean())


def train(
    cfg: CoderConfig,
    *,
    steps: int,
    batch: int,
    lr: float,
    seed: int = 0,
    dead_after: int | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
):
    """Plain Adam (constant lr) on fresh samples each step; tracks dead latents for AuxK."""
    torch.manual_seed(seed)
    dictionary = atoms(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    coder = build(cfg)
    coder.init_from_data(sample(dictionary, 2048, gen))
    opt = torch.optim.Adam(coder.parameters(), lr=lr, betas=betas)
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    dead_after = dead_after or 20 * batch
    for _ in range(steps):
        out = coder(sample(dictionary, batch, gen), dead_mask=since_fired >= dead_after)
        since_fired = torch.where((out.acts > 0).any(0), 0, since_fired + batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        coder.before_step()
        opt.step()
        coder.after_step()
    coder.eval()
    return coder, dictionary
