"""Ready-made tasks for circuit discovery that need no tokenizer."""

from __future__ import annotations

import torch

from ..errors import MechscopeError
from ..heads import repeated_random_tokens, require_heads
from ..patching.task import Task


def induction_task(model, span: int = 12, prefix: int = 8, batch: int = 24, seed: int = 0, bos: int | None = 0) -> Task:
    """Induction: clean = ``[bos] r r[:prefix]`` with r a span of distinct random tokens,
    answer r[prefix] (copying from the first occurrence); corrupt = ``[bos] reversed(r)
    r[:prefix]``, whose first copy puts r[prefix - 2] after r[prefix - 1]: the foil the
    corrupted context induces. Every previous-token relation of the first copy changes,
    so both the previous-token -> induction-head (K) path and the token identity (V) path
    carry the difference."""
    require_heads(model, "induction tasks")
    if not 2 <= prefix < span:
        raise MechscopeError(f"prefix must be between 2 and span - 1 = {span - 1}, got {prefix}")
    rows = repeated_random_tokens(model.dims.d_vocab, span, batch, seed, prefix_token=bos)
    r = rows[:, 1 : span + 1] if bos is not None else rows[:, :span]
    head = [torch.full((batch, 1), bos, dtype=torch.long)] if bos is not None else []
    clean = torch.cat([*head, r, r[:, :prefix]], 1)
    corrupt = torch.cat([*head, r.flip(1), r[:, :prefix]], 1)
    return Task(clean, corrupt, r[:, prefix], r[:, prefix - 2])
