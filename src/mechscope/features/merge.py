"""`merge`: two accumulators over disjoint sets of tokens (the ranks of a distributed build)
into the one accumulator a single pass over all of those tokens gives, bit for bit.

A single pass keeps, per statistic, a function of the set of (token, latent, activation)
triples (see `accumulate`), so merging is: sums add (`total` exactly, in fixed point); each
top-k list keeps the k strongest entries, the earlier token first on ties (the order a pass
keeps them in, since later tokens never displace an equal earlier one); each sample bin keeps
the `samples` entries of lowest (priority, token). Merged lists come out in rank order, as
`Accumulator.canonical` puts a single pass's."""

from __future__ import annotations

import torch

from .accumulate import Accumulator, take, top_order

SAMPLES = ("s_pri", "s_idx", "s_val")


def merge(acc: Accumulator, other: Accumulator) -> Accumulator:
    """Add `other`'s statistics into `acc` (returned); their tokens must not overlap.
    `n_tokens` is left to the caller (a rank's is where its last batch ended)."""
    if (acc.d, acc.cfg) != (other.d, other.cfg):
        raise ValueError("only accumulators of the same dictionary width and settings merge")
    acc.count += other.count
    acc.hist += other.hist
    acc.total_hi += other.total_hi
    acc.total_lo += other.total_lo
    acc.carry()
    both = {name: torch.cat([getattr(acc, name), getattr(other, name)], dim=1) for name in Accumulator.TOP}
    order = top_order(both["top_val"], both["top_idx"])[:, : acc.cfg.k]
    for name, a in both.items():
        setattr(acc, name, take(a, order))
    _merge_samples(acc, other)
    return acc


def _merge_samples(acc: Accumulator, other: Accumulator) -> None:
    s = acc.cfg.samples
    if s == 0:
        return
    shape = acc.s_pri.shape
    both = {name: torch.cat([getattr(acc, name), getattr(other, name)], dim=2).flatten(0, 1) for name in SAMPLES}
    key_idx = torch.where(both["s_idx"] >= 0, both["s_idx"], torch.iinfo(torch.int64).max)
    by_token = torch.argsort(key_idx, dim=1, stable=True)
    by_priority = torch.argsort(both["s_pri"].gather(1, by_token), dim=1, stable=True)
    order = by_token.gather(1, by_priority)[:, :s]  # empty slots (priority EMPTY) last
    for name, a in both.items():
        setattr(acc, name, a.gather(1, order).view(shape))
