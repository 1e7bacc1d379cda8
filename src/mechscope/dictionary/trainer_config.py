"""`TrainConfig`: how a dictionary is optimised (schedule, batch, checkpoints). The
process group it trains in under `torchrun` is `mechscope.distributed`'s."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import MechscopeError

DECAYS = ("linear", "cosine", "none")
ADAMS = ("dense", "lazy")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one or more dictionaries on a stream of activation batches."""

    total_tokens: int = 20_000_000
    """Training tokens (all ranks together); steps = total_tokens // batch_tokens."""
    batch_tokens: int = 4096
    """Tokens per optimiser step (the global batch: all ranks together)."""
    lr: float | None = None
    """Peak Adam learning rate; None: 2e-4 / sqrt(d_sae / 16384) per dictionary (Gao et al. 2024 scaling)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    warmup_steps: int = 100
    """Linear warm-up of the learning rate from 0 over this many steps."""
    decay: str = "linear"
    """linear: to 0 over the last `decay_fraction` of steps; cosine: cosine to 0 after warm-up; none: constant."""
    decay_fraction: float = 0.2
    """Share of the steps, at the end, over which the linear decay runs."""
    grad_clip: float = 0.0
    """Clip each dictionary's gradient norm to this (0: no clipping)."""
    seed: int = 0
    """Seeds the dictionaries' initialisation and the data order."""
    checkpoint_every: int = 500
    """Steps between checkpoints (a checkpoint is also written at the end)."""
    eval_every: int = 0
    """Steps between evaluations on held-out activations (0: only at the end)."""
    dead_window: int | None = None
    """Tokens without firing after which a latent counts as dead (AuxK); None: each dictionary's dead_after."""
    norm_batches: int = 4
    """Batches used to estimate the input scale (sqrt(d_in) / mean norm) and to initialise b_dec; 0: neither."""
    autocast: bool = True
    """bf16 autocast of the dictionaries' forward on CUDA (ignored on CPU)."""
    adam: str = "dense"
    """dense: torch's Adam over every parameter; lazy: only the latents a step touched are
    updated (top-k family; see lazy_adam.py for what that changes and its bound)."""

    def __post_init__(self):
        if self.batch_tokens < 1 or self.total_tokens < self.batch_tokens:
            raise MechscopeError(
                f"need total_tokens >= batch_tokens >= 1, got {self.total_tokens} and {self.batch_tokens}"
            )
        if self.adam not in ADAMS:
            raise MechscopeError(f"adam must be one of {', '.join(ADAMS)}, got {self.adam!r}")
        if self.decay not in DECAYS:
            raise MechscopeError(f"decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if not 0 <= self.decay_fraction <= 1:
            raise MechscopeError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")
        for name, low in (("checkpoint_every", 1), ("eval_every", 0), ("warmup_steps", 0)):
            if getattr(self, name) < low:
                raise MechscopeError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise MechscopeError(f"lr must be positive, got {self.lr} (leave it out for the width-scaled default)")
        if self.dead_window is not None and self.dead_window < 1:
            raise MechscopeError(f"dead_window must be at least 1 token, got {self.dead_window}")

    @property
    def steps(self) -> int:
        return self.total_tokens // self.batch_tokens

    def peak_lr(self, d_sae: int) -> float:
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 2**14)

    def lr_at(self, step: int, d_sae: int) -> float:
        """Learning rate of `step` (0-based): warm-up, then the decay."""
        peak, total = self.peak_lr(d_sae), self.steps
        if step < self.warmup_steps:
            return peak * (step + 1) / (self.warmup_steps + 1)
        if self.decay == "cosine":
            span = max(1, total - self.warmup_steps)
            return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - self.warmup_steps) / span)))
        if self.decay == "linear":
            start = total - int(total * self.decay_fraction)
            if step >= start:
                return peak * max(0.0, (total - step) / max(1, total - start))
        return peak
