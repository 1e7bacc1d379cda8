"""`Run`: what one (batched) forward pass gives back: tokens, logits, recorded activations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .errors import MechscopeError


class Cache(dict):
    """Recorded activations by site name; a missing name says what was recorded."""

    def __missing__(self, name: str):
        recorded = ", ".join(self) or "nothing"
        raise MechscopeError(f"'{name}' was not recorded in this run (recorded: {recorded}); pass it in record=[...]")


@dataclass
class Run:
    """What one `model.run(...)` gives back: the inputs, the main output and the recorded sites.

    Invariants: `tokens`, `mask`, `logits` and every cached value share the batch axis (with
    copies, N*P rows in the order `prompts.repeat(N, 1)` gives); position axes are padded back
    to the widest prompt (zeros past each row's `lengths`), except those cut by `positions=`;
    `cache` holds exactly the sites recorded, and names what was when asked for another.

        run = model.run(["def f(x):", "x = 1"], record="blocks.0.hook_resid_post")
        run.cache["blocks.0.hook_resid_post"]    # [2, pos, d_model]
        run.top_tokens(k=3)                      # next-token guesses after each prompt
    """

    tokens: Int[Tensor, "batch pos"]
    """Token ids; for models that do not read tokens, their input tensor."""
    mask: Int[Tensor, "batch pos"] | None
    """1 for real tokens, 0 for padding (sequences are right-padded); None for non-token inputs."""
    logits: Float[Tensor, "batch pos vocab"] | None
    """None when the model has no LM head or the run stopped after its last recorded site."""
    cache: Cache
    output: Tensor | None = None
    """The model's main output: logits, or the last hidden state for encoders."""
    tokenizer: Any = field(default=None, repr=False)

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        if self.mask is None:
            raise MechscopeError("this run has no attention mask (its inputs are not token ids): no lengths")
        return self.mask.sum(-1)

    def str_tokens(self, row: int = 0) -> list[str]:
        """The tokens of one sequence as strings (padding left out)."""
        if self.tokenizer is None:
            return [str(t) for t in self.tokens[row, : int(self.lengths[row])].tolist()]
        ids = self.tokens[row, : int(self.lengths[row])].tolist()
        return [self.tokenizer.decode([t]) for t in ids]

    def top_tokens(self, k: int = 5, position: int = -1) -> list[list[tuple[str, float]]]:
        """For each sequence, the k most likely next tokens at `position` with probabilities.
        Negative positions count back from each sequence's own last token."""
        if self.logits is None:
            raise MechscopeError("this run has no logits (encoder without LM head, or logits=False)")
        if k < 0:
            raise MechscopeError(f"k must be 0 or more (how many tokens to list), got {k}")
        rows = torch.arange(len(self.tokens))
        index = self.lengths + position if position < 0 else torch.full_like(self.lengths, position)
        probs = self.logits[rows, index.to(self.logits.device)].float().softmax(-1)
        top = probs.topk(min(k, probs.shape[-1]), dim=-1)
        decode = (lambda t: self.tokenizer.decode([t])) if self.tokenizer is not None else str
        return [[(decode(t), p) for t, p in zip(ids.tolist(), ps.tolist())] for ids, ps in zip(top.indices, top.values)]

    def next_token_stats(self, row: int = 0) -> dict[str, Tensor]:
        """Per position of one sequence: entropy (nats) of the next-token distribution,
        top-1 probability, and probability and rank of the token that actually follows
        (NaN / -1 at the last position)."""
        if self.logits is None:
            raise MechscopeError("this run has no logits (encoder without LM head, or logits=False)")
        n = int(self.lengths[row])
        logp = self.logits[row, :n].float().log_softmax(-1)
        probs = logp.exp()
        actual = torch.full((n,), float("nan"))
        rank = torch.full((n,), -1, dtype=torch.long)
        if n > 1:
            following = self.tokens[row, 1:n].to(logp.device)
            p_next = probs[:-1].gather(-1, following[:, None])[:, 0]
            actual[:-1] = p_next.cpu()
            rank[:-1] = (probs[:-1] > p_next[:, None]).sum(-1).cpu()
        return {
            "entropy": -(probs * logp).sum(-1).cpu(),
            "top1": probs.max(-1).values.cpu(),
            "p_actual": actual,
            "rank_actual": rank,
        }
