"""`BuildConfig`: what a feature store keeps per latent, and how the corpus is read."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import MechscopeError


@dataclass(frozen=True)
class BuildConfig:
    """Settings of a feature-store build (recorded in the store; an incremental add reuses them)."""

    ctx_len: int = 64
    """Tokens per context the model reads (the corpus is cut into contexts of this length)."""
    batch_size: int = 16
    """Contexts per forward pass (bounded memory: batch_size x ctx_len x d_sae activations at once)."""
    k: int = 20
    """Top activating contexts kept per latent (exact top-k over the whole corpus)."""
    before: int = 24
    """Tokens kept before the activating token in each example window."""
    after: int = 8
    """Tokens kept after it."""
    samples: int = 3
    """Examples sampled per latent and activation bin (a quarter decade wide), uniformly at random."""
    co_active: int = 8
    """Other latents kept (strongest first) at each top example's token: the co-occurring latents."""
    neighbours: int = 10
    """Decoder-cosine neighbours kept per latent."""
    logits: int = 10
    """Most promoted and most suppressed tokens kept per latent."""
    checkpoint_every: int = 50
    """Save the build state every this many batches (a killed build resumes from there)."""

    def __post_init__(self) -> None:
        for name in ("ctx_len", "batch_size", "k", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise MechscopeError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("before", "after", "samples", "co_active", "neighbours", "logits"):
            if getattr(self, name) < 0:
                raise MechscopeError(f"{name} must be 0 or more, got {getattr(self, name)}")

    @property
    def window(self) -> int:
        return self.before + 1 + self.after

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BuildConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def same_statistics(self, other: BuildConfig) -> bool:
        """Whether a store built with `other` can take more corpus built with these settings."""
        mine, theirs = self.to_dict(), other.to_dict()
        for free in ("batch_size", "checkpoint_every"):
            mine.pop(free), theirs.pop(free)
        return mine == theirs
