"""Attribution patching (Nanda 2023; Syed et al. 2023): the first-order estimate of every
patch of a sweep from one forward and one backward pass,

    metric(patched) - metric(base) ~= sum over the patched entries of (a_source - a_base) * d metric / d a,

with the gradient taken on the base run (the corrupted run when denoising, the clean run
when noising). The gradient at each site is read through a zero-valued `add` edit, so it
is the gradient with respect to the activation exactly as the model uses it. Exact for a
metric that is linear in the patched activation; `agreement` says how close it is to the
exact sweep elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .. import edits as E
from .metrics import Metric, MetricFn, as_metric
from .result import PatchResult, normalise
from .sweep import check_direction, plan, pos_labels, record
from .task import Task


def site_gradients(
    model, task: Task, metric: Metric, sites: Sequence[str], base: Tensor
) -> tuple[float, dict[str, Tensor]]:
    """(metric of the base run, d metric / d activation at each site) from one forward+backward."""
    with torch.no_grad():
        shapes = model.run(base, record=list(sites), attention_mask=task.attention_mask(), logits=False).cache
    deltas = {s: torch.zeros_like(shapes[s], requires_grad=True) for s in sites}
    run = model.run(
        base, attention_mask=task.attention_mask(), grad=True, edits=[E.add(s, d) for s, d in deltas.items()]
    )
    value = metric(run.logits)
    grads = torch.autograd.grad(value, list(deltas.values()), allow_unused=True)
    return float(value.detach()), {
        s: (torch.zeros_like(deltas[s]) if g is None else g.detach()) for s, g in zip(deltas, grads)
    }


def attribution_sweep(
    model,
    task: Task,
    metric: Metric | MetricFn,
    *,
    sweep: str = "resid",
    direction: str = "denoise",
    positions: Sequence[int] | None = None,
) -> PatchResult:
    """The same sweep as `patching.sweep`, estimated to first order (see the module doc).
    `patched` holds metric(base) + the estimated change."""
    check_direction(direction)
    metric = as_metric(metric)
    patches, axes, shape, chosen = plan(model, sweep, task.clean.shape[1], positions)
    sites = sorted({p.site for p in patches}, key=model.table.order.__getitem__)
    clean, corrupt = record(model, task, sites)
    with torch.no_grad():
        m_clean, m_corrupt = float(metric(clean.logits)), float(metric(corrupt.logits))
    source, base_run, base = (clean, corrupt, task.corrupt) if direction == "denoise" else (corrupt, clean, task.clean)
    _, grads = site_gradients(model, task, metric, sites, base)
    # per site: (a_src - a_base) * grad, summed over batch and the feature axis -> [pos] or [pos, head]
    effect = {}
    for s in sites:
        product = (source.cache[s].float() - base_run.cache[s].float()) * grads[s].float()
        effect[s] = product.sum(-1).sum(0)
    values = []
    for p in patches:
        e = effect[p.site]
        e = e if p.head is None else e[:, p.head]
        e = e.sum() if p.position is None else e[p.position].sum()
        values.append(e)
    base_metric = m_corrupt if direction == "denoise" else m_clean
    effects = torch.stack(values).reshape(shape).cpu() + base_metric
    scores, normalized = normalise(effects, m_clean, m_corrupt, direction)
    return PatchResult(
        model.name,
        sweep,
        direction,
        "attribution",
        metric.name,
        axes,
        scores,
        effects,
        m_clean,
        m_corrupt,
        normalized,
        chosen,
        pos_labels(model, task.clean[0], chosen),
    )


@dataclass(frozen=True)
class Agreement:
    pearson: float
    """Pearson correlation of the two score tensors."""
    sign: float
    """Fraction of patches where both have the same sign (among those where either is non-negligible)."""
    n: int


def agreement(exact: PatchResult | Tensor, approx: PatchResult | Tensor, tolerance: float = 1e-6) -> Agreement:
    """How well attribution patching matches exact patching: Pearson r and sign agreement."""
    a = (exact.scores if isinstance(exact, PatchResult) else exact).flatten().double()
    b = (approx.scores if isinstance(approx, PatchResult) else approx).flatten().double()
    if a.shape != b.shape:
        from ..errors import MechscopeError

        raise MechscopeError(f"cannot compare sweeps of {a.numel()} and {b.numel()} patches: run the same sweep")
    da, db = a - a.mean(), b - b.mean()
    denominator = float(da.norm() * db.norm())
    pearson = float((da * db).sum()) / denominator if denominator > 0 else float("nan")
    keep = (a.abs() > tolerance) | (b.abs() > tolerance)
    sign = float((torch.sign(a[keep]) == torch.sign(b[keep])).double().mean()) if bool(keep.any()) else 1.0
    return Agreement(pearson, sign, a.numel())
