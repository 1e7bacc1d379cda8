"""Activation patching sweeps: patch one site (at one position / head) at a time from one
run into another and see how much of the clean-vs-corrupt metric gap it moves.

Directions: "denoise" runs the corrupted prompts and writes in clean activations (which
parts suffice to restore the behaviour?); "noise" runs the clean prompts and writes in
corrupted activations (which parts are necessary?).

Many patches share one forward pass by riding the batch dimension: for k patches the
prompt batch is stacked k times, and one replace edit per site writes, into copy c, the
source activation only where patch c says (its positions and heads). Clean and corrupted
activations are recorded once. `batch_size` bounds the rows of one forward.

A patch whose source activation equals the base run's there (bit for bit, e.g. every
position before the first token where the clean and corrupted prompts differ, in a causal
model) writes a value over itself: the run is the base run, so its metric is the base
run's without a forward (the identity the tests check).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import edits as E
from ..errors import MechscopeError
from .metrics import Metric, MetricFn, as_metric
from .result import PatchResult, normalise
from .task import Task

log = logging.getLogger(__name__)

SWEEPS = {
    "resid": ("blocks.{l}.hook_resid_pre", False, True),
    "attn": ("blocks.{l}.hook_attn_out", False, True),
    "mlp": ("blocks.{l}.hook_mlp_out", False, True),
    "heads": ("blocks.{l}.attn.hook_z", True, False),
    "heads-pos": ("blocks.{l}.attn.hook_z", True, True),
}
"""sweep -> (site pattern, per head?, per position?)."""
DIRECTIONS = ("denoise", "noise")


@dataclass(frozen=True)
class Patch:
    """One node to patch: a site, optionally one position (absolute) and one head."""

    site: str
    position: int | None = None
    head: int | None = None


Group = Sequence[Patch]
"""Patches applied together in one run (one score)."""


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise MechscopeError(f"direction must be 'denoise' or 'noise', got {direction!r}")


def plan(model, sweep: str, n_pos: int, positions: Sequence[int] | None = None
         ) -> tuple[list[Patch], list[str], tuple[int, ...], list[int]]:
    """The patches of a sweep in the order of the flattened scores, with axis names,
    shape and the absolute positions swept."""
    if sweep not in SWEEPS:
        raise MechscopeError(f"unknown sweep {sweep!r}: choose one of {', '.join(SWEEPS)}")
    pattern, per_head, per_pos = SWEEPS[sweep]
    if sweep == "mlp" and not model.dims.d_mlp:
        raise MechscopeError(f"{model.name} is attention-only: it has no MLPs to patch (use resid, attn or heads)")
    chosen = list(range(n_pos)) if positions is None else [p % n_pos if -n_pos <= p < n_pos else p for p in positions]
    if any(not 0 <= p < n_pos for p in chosen) or not chosen:
        raise MechscopeError(f"positions {list(positions or [])} must be a non-empty list within 0-{n_pos - 1}")
    layers, heads = range(model.dims.n_layers), range(model.dims.n_heads)
    axes, shape = ["layer"], [len(layers)]
    if per_head:
        axes.append("head"), shape.append(len(heads))
    if per_pos:
        axes.append("pos"), shape.append(len(chosen))
    patches = []
    for layer in layers:
        site = pattern.format(l=layer)
        for head in (heads if per_head else [None]):
            for pos in (chosen if per_pos else [None]):
                patches.append(Patch(site, pos, head))
    return patches, axes, tuple(shape), (chosen if per_pos else [])


def record(model, task: Task, sites: Sequence[str]):
    """(clean run, corrupted run), each recording `sites` once, without gradients."""
    mask = task.attention_mask()
    with torch.no_grad():
        clean = model.run(task.clean, record=list(sites), attention_mask=mask)
        corrupt = model.run(task.corrupt, record=list(sites), attention_mask=mask)
    if clean.logits is None:
        raise MechscopeError(f"{model.name} gives no logits (an encoder without an LM head): patching metrics read "
                             "next-token logits")
    return clean, corrupt


def _site_edit(model, site: str, picks: list[tuple[int, int | None, int | None]], source: Tensor, copies: int):
    """One replace edit writing `source` into copy c at the (pos, head) of each pick."""
    per_head = "head" in model.table[site].dims

    def fn(x: Tensor) -> Tensor:
        rows = source.shape[0]
        mask = torch.zeros((copies, rows) + tuple(x.shape[1:3 if per_head else 2]), dtype=torch.bool, device=x.device)
        for copy, pos, head in picks:
            index = (copy, slice(None), slice(None) if pos is None else pos) + ((() if head is None else (head,)))
            mask[index] = True
        mask = mask.flatten(0, 1)[..., None]
        tiled = source.to(device=x.device, dtype=x.dtype).repeat(copies, *[1] * (source.dim() - 1))
        return torch.where(mask, tiled, x)
    return E.replace(site, fn)


def unchanged(patches: Sequence[Patch], source: dict[str, Tensor], base: dict[str, Tensor]) -> Tensor:
    """Per patch: does the source equal the base run at its positions and heads (every row)?"""
    same = []
    for p in patches:
        a, b = source[p.site], base[p.site]
        index = (slice(None), slice(None) if p.position is None else p.position) + (() if p.head is None else (p.head,))
        same.append(bool(torch.equal(a[index], b[index])))
    return torch.tensor(same, dtype=torch.bool)


def run_groups(model, task: Task, groups: Sequence[Group], source: dict[str, Tensor], base: Tensor,
               metric: Metric, batch_size: int | None = None, progress: bool = False,
               extra: Sequence[E.Edit] = ()) -> Tensor:
    """The metric of each group's patched run: `base` tokens, `source` activations written
    at the group's patches. Groups ride the batch dimension, `batch_size` rows a forward.
    `extra` edits apply to every copy (they see all copies' rows)."""
    rows = len(task)
    per_forward = max(1, (batch_size or 128) // rows)
    mask = task.attention_mask()
    values = []
    chunks = range(0, len(groups), per_forward)
    for start in tqdm(chunks, desc="patching", disable=not progress, leave=False):
        chunk = groups[start:start + per_forward]
        by_site: dict[str, list] = defaultdict(list)
        for copy, group in enumerate(chunk):
            for p in group:
                by_site[p.site].append((copy, p.position, p.head))
        edits = [_site_edit(model, site, picks, source[site], len(chunk)) for site, picks in by_site.items()]
        with torch.no_grad():
            logits = model.run(base.repeat(len(chunk), 1), attention_mask=mask.repeat(len(chunk), 1),
                               edits=[*extra, *edits]).logits
        values += [metric(logits[c * rows:(c + 1) * rows]).detach().float().cpu() for c in range(len(chunk))]
    return torch.stack(values) if values else torch.zeros(0)


def pos_labels(model, tokens: Tensor, positions: list[int]) -> list[str]:
    if model.tokenizer is None:
        return [f"{p}:{int(tokens[p])}" for p in positions]
    return [f"{p}:{model.tokenizer.decode([int(tokens[p])])}" for p in positions]


def sweep(model, task: Task, metric: Metric | MetricFn, *, sweep: str = "resid", direction: str = "denoise",
          positions: Sequence[int] | None = None, batch_size: int | None = None, progress: bool = False) -> PatchResult:
    """Exact activation patching of every (layer, position), (layer, head) or (layer,
    head, position) of one kind of site; see `PatchResult.scores` for the normalisation.

    sweep: resid (`hook_resid_pre`), attn (`hook_attn_out`), mlp (`hook_mlp_out`), heads
    (`attn.hook_z`, all positions at once), heads-pos (`attn.hook_z` per position).
    positions: absolute positions to sweep (default all). batch_size: rows per forward
    (patches x prompts; default 128).
    """
    check_direction(direction)
    metric = as_metric(metric)
    patches, axes, shape, chosen = plan(model, sweep, task.clean.shape[1], positions)
    sites = sorted({p.site for p in patches}, key=model.table.order.__getitem__)
    clean, corrupt = record(model, task, sites)
    with torch.no_grad():
        m_clean, m_corrupt = float(metric(clean.logits)), float(metric(corrupt.logits))
    source, base = (clean, task.corrupt) if direction == "denoise" else (corrupt, task.clean)
    base_run, m_base = (corrupt, m_corrupt) if direction == "denoise" else (clean, m_clean)
    same = unchanged(patches, source.cache, base_run.cache)
    values = torch.full((len(patches),), m_base)
    todo = [p for p, s in zip(patches, same.tolist()) if not s]
    if todo:
        values[~same] = run_groups(model, task, [(p,) for p in todo], source.cache, base, metric, batch_size, progress)
    values = values.reshape(shape)
    scores, normalized = normalise(values, m_clean, m_corrupt, direction)
    if not normalized:
        log.warning("clean and corrupted runs give the same %s (%.4g): scores are raw differences", metric.name, m_clean)
    return PatchResult(model.name, sweep, direction, "exact", metric.name, axes, scores, values, m_clean, m_corrupt,
                       normalized, chosen, pos_labels(model, task.clean[0], chosen))


def patch(model, task: Task, metric: Metric | MetricFn, patches: Group, *, direction: str = "denoise") -> float:
    """The metric after patching all of `patches` at once (e.g. every position of a site:
    `Patch("blocks.0.hook_resid_pre")`)."""
    check_direction(direction)
    metric = as_metric(metric)
    for p in patches:
        model.table[p.site]
    clean, corrupt = record(model, task, sorted({p.site for p in patches}, key=model.table.order.__getitem__))
    source, base = (clean, task.corrupt) if direction == "denoise" else (corrupt, task.clean)
    return float(run_groups(model, task, [tuple(patches)], source.cache, base, metric)[0])
