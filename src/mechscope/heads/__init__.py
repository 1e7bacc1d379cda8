"""Attention heads: detectors that score every head of a model from its attention
patterns (previous-token, duplicate-token and induction heads)."""

from .detectors import (
    HeadScores,
    duplicate_token_scores,
    induction_scores,
    previous_token_scores,
    record_patterns,
    repeat_span,
    repeated_random_tokens,
    repeated_tokens_for,
    require_heads,
    stripe_scores,
)

__all__ = [
    "HeadScores",
    "previous_token_scores",
    "duplicate_token_scores",
    "induction_scores",
    "repeated_random_tokens",
    "repeated_tokens_for",
    "require_heads",
    "record_patterns",
    "stripe_scores",
    "repeat_span",
]
