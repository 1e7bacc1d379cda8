"""Held-out contrast pairs as a scoring batch for the search: each pair's positive and
negative texts, the tokens where they start to differ, and the two scores the search
reads from a forward — the completion log-probabilities (behaviour) and the next-token
distributions at the shared prefix (fluency)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..errors import MechscopeError
from .pairs import Pair


@dataclass
class Heldout:
    """2H rows: the H positive texts, then the H negative ones (right-padded)."""

    ids: Int[Tensor, "row pos"]
    mask: Int[Tensor, "row pos"]
    completion: Bool[Tensor, "row pos"]
    """Positions p-1 whose next token p is part of the text's own completion (after the shared prefix)."""
    prefix: Bool[Tensor, "row pos"]
    """Positions p-1 whose next token p is still in the shared prefix (where steering should not hurt)."""
    pairs: int

    @classmethod
    def build(cls, model, pairs: list[Pair]) -> Heldout:
        if not pairs:
            raise MechscopeError("the search needs held-out pairs to score behaviour: give at least one")
        enc = model.tokenize([p for p, _ in pairs] + [n for _, n in pairs])
        ids, mask = enc["input_ids"].cpu(), enc["attention_mask"].cpu()
        h, width = len(pairs), ids.shape[1]
        lengths = mask.sum(1)
        completion = torch.zeros(2 * h, width - 1, dtype=torch.bool)
        prefix = torch.zeros_like(completion)
        for i in range(h):
            a, b = ids[i, : lengths[i]], ids[h + i, : lengths[h + i]]
            shared = int((a[: len(b)] == b[: len(a)]).long().cumprod(0).sum())
            if shared >= min(len(a), len(b)):
                raise MechscopeError(
                    f"held-out pair {i}: one text is a prefix of the other, so they have no differing completion"
                )
            for row, n in ((i, len(a)), (h + i, len(b))):
                completion[row, shared - 1 : n - 1] = True
                prefix[row, : max(shared - 1, 0)] = True
        if not bool(prefix.any()):  # no shared prefix anywhere: judge fluency on every position
            prefix = mask[:, 1:].bool()
        return cls(ids, mask, completion, prefix, h)

    def log_probs(self, logits: Float[Tensor, "row pos vocab"]) -> Float[Tensor, "row pos vocab"]:
        """Next-token log-probabilities at every position but the last (computed once per forward)."""
        return logits[:, :-1].float().log_softmax(-1)

    def scores(self, logp: Float[Tensor, "row pos vocab"]) -> Float[Tensor, " row"]:
        """Sum of log-probabilities of each row's completion tokens; rows = copies x 2H."""
        copies = logp.shape[0] // len(self.ids)
        ids = self.ids.repeat(copies, 1).to(logp.device)
        picked = logp.gather(-1, ids[:, 1:, None])[..., 0]
        return (picked * self.completion.repeat(copies, 1).to(logp.device)).sum(1)

    def preference(self, scores: Float[Tensor, " row"]) -> Float[Tensor, "copy pair"]:
        """log p(positive completion) - log p(negative completion) per copy and pair."""
        rows = scores.view(-1, 2, self.pairs)
        return rows[:, 0] - rows[:, 1]

    def kl(
        self, base: Float[Tensor, "row pos vocab"], steered: Float[Tensor, "row pos vocab"]
    ) -> Float[Tensor, " copy"]:
        """Mean KL(unsteered || steered) over the prefix positions, per copy (both log-probabilities)."""
        where = self.prefix.to(steered.device)
        p = base[where]  # [n, vocab]
        q = steered.view(-1, *base.shape)[:, where]  # [copy, n, vocab]
        return (p.exp() * (p - q)).sum(-1).mean(-1)
