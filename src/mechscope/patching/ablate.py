"""Ablations: knock out a node (a site, optionally some heads / positions) and measure
the metric before and after. Zero, mean (over a reference data set) and resample (from
a reference data set) ablation, built on `mechscope.edits`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .. import edits as E
from ..errors import MechscopeError
from .metrics import Metric, MetricFn, as_metric
from .task import Task

HOW = ("zero", "mean", "resample")


@dataclass(frozen=True)
class Ablation:
    site: str
    how: str
    before: float
    after: float

    @property
    def change(self) -> float:
        return self.after - self.before


def ablation_edit(
    model,
    site: str,
    how: str,
    reference=None,
    *,
    heads: int | Sequence[int] | None = None,
    positions=None,
    seed: int = 0,
    over_positions: bool | None = None,
    n_pos: int | None = None,
) -> E.Edit:
    """The edit for one ablation. reference: token ids [n, pos] or prompts, for mean/resample.
    Mean ablation keeps positions when the reference has the target's length `n_pos`
    (else it averages over positions too, or as `over_positions` says)."""
    if how not in HOW:
        raise MechscopeError(f"how must be one of {', '.join(HOW)}, got {how!r}")
    model.table[site]
    if how == "zero":
        return E.zero(site, heads=heads, positions=positions)
    if reference is None:
        raise MechscopeError(f"{how} ablation needs a reference data set (token ids [n, pos] or prompts)")
    with torch.no_grad():
        values = model.run(reference, record=[site], logits=False).cache[site]
    if how == "mean":
        pooled = over_positions if over_positions is not None else (n_pos is not None and values.shape[1] != n_pos)
        return E.mean(site, values, over_positions=pooled, heads=heads, positions=positions)
    if n_pos is not None and values.shape[1] != n_pos:
        raise MechscopeError(
            f"resample ablation needs reference sequences as long as the ablated ones "
            f"({values.shape[1]} vs {n_pos} tokens): give a reference of the same length"
        )
    return E.resample(site, values, seed=seed, heads=heads, positions=positions)


def ablate(
    model,
    data: Task | Tensor,
    metric: Metric | MetricFn,
    site: str,
    *,
    how: str = "zero",
    reference=None,
    heads: int | Sequence[int] | None = None,
    positions=None,
    seed: int = 0,
    over_positions: bool | None = None,
) -> Ablation:
    """The metric on `data` (a Task's clean prompts, or token ids) before and after ablating `site`."""
    metric = as_metric(metric)
    tokens = data.clean if isinstance(data, Task) else torch.as_tensor(data)
    mask = data.attention_mask() if isinstance(data, Task) else None
    edit = ablation_edit(
        model,
        site,
        how,
        reference,
        heads=heads,
        positions=positions,
        seed=seed,
        over_positions=over_positions,
        n_pos=tokens.shape[-1],
    )
    with torch.no_grad():
        before = float(metric(model.run(tokens, attention_mask=mask).logits))
        after = float(metric(model.run(tokens, attention_mask=mask, edits=[edit]).logits))
    return Ablation(site, how, before, after)
