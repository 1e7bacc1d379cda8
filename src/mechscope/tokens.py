"""Tokens as the methods take and show them: arguments that must be single tokens (or
ids), ids decoded to text, prompt positions (negative ones count from each sequence's
end), and the check that a model has an LM head to predict tokens with."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .errors import MechscopeError


def require_lm_head(model, method: str) -> None:
    if not model.has_lm_head:
        raise MechscopeError(
            f"{model.name} has no LM head (an encoder without an unembedding): {method} needs "
            "one; load the model with its LM head (e.g. a ...ForCausalLM / ...ForMaskedLM class)"
        )


def decode(model, token_id: int) -> str:
    """The text of one token (its id as text when the model has no tokenizer)."""
    return model.tokenizer.decode([token_id]) if model.tokenizer is not None else str(token_id)


def decode_many(model, token_ids: Sequence[int]) -> dict[int, str]:
    """{id: text} of single tokens, decoded in one tokenizer call (as `decode` does one)."""
    ids = sorted({int(t) for t in token_ids})
    tokenizer = model.tokenizer
    if tokenizer is None:
        return {t: str(t) for t in ids}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if ids and backend is not None and getattr(tokenizer, "clean_up_tokenization_spaces", True) is False:
        # a fast tokenizer's `decode` is its backend's, with no clean-up: one Rust call for
        # all ids (thousands of single `decode` calls cost as much as a forward pass)
        texts = backend.decode_batch([[t] for t in ids], skip_special_tokens=False)
        if texts[:4] == [tokenizer.decode([t]) for t in ids[:4]]:
            return dict(zip(ids, texts))
    return dict(zip(ids, tokenizer.batch_decode([[t] for t in ids])))


def token_ids(model, tokens: Sequence[str | int] | str | int, what: str = "target") -> list[int]:
    """Token ids for strings that must each be one token (or ids, checked against the vocabulary)."""
    items = [tokens] if isinstance(tokens, (str, int)) else list(tokens)
    out = []
    for token in items:
        if isinstance(token, Tensor) and token.numel() == 1:
            token = int(token)
        if isinstance(token, int) and not isinstance(token, bool):
            if not 0 <= token < model.dims.d_vocab:
                raise MechscopeError(f"{what} id {token} is outside the vocabulary (0-{model.dims.d_vocab - 1})")
            out.append(token)
            continue
        if not isinstance(token, str):
            raise MechscopeError(f"{what} must be a string (one token) or a token id, got {token!r}")
        if model.tokenizer is None:
            raise MechscopeError(f"{model.name} has no tokenizer: give {what}s as token ids, not {token!r}")
        ids = model.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            pieces = [model.tokenizer.decode([i]) for i in ids]
            raise MechscopeError(f"{what} {token!r} is {len(ids)} tokens {pieces}: give single tokens")
        out.append(ids[0])
    return out


def position_list(positions: int | Sequence[int] | None) -> list[int] | None:
    """Positions as a list (None = every position), checked to be integers."""
    if positions is None:
        return None
    wanted = [positions] if isinstance(positions, int) else list(positions)
    if not wanted or any(isinstance(p, bool) or not isinstance(p, int) for p in wanted):
        raise MechscopeError(f"positions must be an integer or a non-empty list of integers, got {positions!r}")
    return wanted


def absolute_positions(run, positions: list[int] | None) -> tuple[Tensor, Tensor]:
    """Absolute position [batch, pos] of each chosen column of `run` and whether it is a real
    token (not padding); negative positions count back from each sequence's own end."""
    lengths = run.lengths.cpu()
    if positions is None:
        seq = run.tokens.shape[1]
        absolute = torch.arange(seq).expand(len(lengths), seq)
        return absolute.clone(), absolute < lengths[:, None]
    absolute = torch.stack([lengths + p if p < 0 else torch.full_like(lengths, p) for p in positions], dim=1)
    return absolute, torch.ones_like(absolute, dtype=torch.bool)
