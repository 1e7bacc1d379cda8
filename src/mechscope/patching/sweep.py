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
run's without a forward (the identity the tests check). So is a patch after the last
block's attention at a position the metric does not read.

Work the copies share is done once (`share=True`, see `run_groups`): a copy joins the
forward at its first patched block, and the unembedding runs only at the positions the
metric declares it reads.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import edits as E
from ..errors import MechscopeError
from ..hooks import CopyRows, GatherLogits, Plan
from ..plots import visible
from ..run import Cache, Run
from .metrics import Metric, MetricFn, as_metric
from .prefix import (
    CaptureCache,
    PastPrefix,
    PrefixState,
    after,
    from_cache,
    multiples,
    run_prefix,
    shareable,
    shared_prefix,
)
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


def plan(
    model, sweep: str, n_pos: int, positions: Sequence[int] | None = None
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
        axes.append("head")
        shape.append(len(heads))
    if per_pos:
        axes.append("pos")
        shape.append(len(chosen))
    patches = []
    for layer in layers:
        site = pattern.format(l=layer)
        for head in heads if per_head else [None]:
            for pos in chosen if per_pos else [None]:
                patches.append(Patch(site, pos, head))
    return patches, axes, tuple(shape), (chosen if per_pos else [])


def record(model, task: Task, sites: Sequence[str], logit_positions: Tensor | None = None, plans: Sequence[Plan] = ()):
    """(clean run, corrupted run), each recording `sites`, without gradients, in one forward
    of both batches. logit_positions: unembed only there (`GatherLogits`: logits [batch, vocab]).
    plans: more plans for that forward (the sweep's `prefix.CaptureCache`)."""
    mask, rows = task.attention_mask(), len(task)
    plans = [*plans] + ([] if logit_positions is None else [GatherLogits(logit_positions.repeat(2))])
    with torch.no_grad():
        both = model.run(
            torch.cat([task.clean, task.corrupt]), record=list(sites), attention_mask=mask.repeat(2, 1), plans=plans
        )
    if both.logits is None:
        raise MechscopeError(
            f"{model.name} gives no logits (an encoder without an LM head): patching metrics read next-token logits"
        )
    return _half(both, slice(0, rows)), _half(both, slice(rows, 2 * rows))


def _half(run: Run, rows: slice) -> Run:
    """The clean or the corrupted rows of `record`'s joint run (batch-1 values are shared)."""
    cut = lambda t: t if t is None or t.shape[0] == 1 else t[rows]  # noqa: E731
    return Run(
        cut(run.tokens),
        cut(run.mask),
        cut(run.logits),
        Cache({n: cut(v) for n, v in run.cache.items()}),
        cut(run.output),
        run.tokenizer,
    )


def _site_edit(model, site: str, picks: list[tuple[int, int | None, int | None]], source: Tensor, offset: int):
    """One replace edit writing `source` into copy c at the (pos, head) of each pick; copy c
    is row block offset + c of the batch there (offset 1 while the prompt rows ride first)."""
    per_head = "head" in model.table[site].dims

    def fn(x: Tensor) -> Tensor:
        rows = source.shape[0]
        blocks = x.shape[0] // rows
        mask = torch.zeros((blocks, rows) + tuple(x.shape[1 : 3 if per_head else 2]), dtype=torch.bool, device=x.device)
        for copy, pos, head in picks:
            index = (offset + copy, slice(None), slice(None) if pos is None else pos) + (
                () if head is None else (head,)
            )
            mask[index] = True
        mask = mask.flatten(0, 1)[..., None]
        tiled = source.to(device=x.device, dtype=x.dtype).repeat(blocks, *[1] * (source.dim() - 1))
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


def unread(model, patches: Sequence[Patch], read: Tensor | None) -> Tensor:
    """Per patch: does it write only positions the metric never reads (`read`, per row),
    at a site after the last block's attention has mixed positions? From there on each
    position is computed alone (MLP, norms, unembedding): the metric sees the base run."""
    if read is None:
        return torch.zeros(len(patches), dtype=torch.bool)
    mixed = model.table.order[f"blocks.{model.dims.n_layers - 1}.attn.hook_z"]
    wanted = set(read.tolist())
    return torch.tensor(
        [p.position is not None and p.position not in wanted and model.table.order[p.site] >= mixed for p in patches],
        dtype=torch.bool,
    )


def first_layer(model, group: Group) -> int:
    """The first block a group's patches touch: every copy computes the same thing before it.
    -1 for a site outside the blocks (embeddings, final norm): then the inputs are copied.
    An empty group (the base run) joins at the last block."""
    layers = [model.table[p.site].layer for p in group]
    if not layers:
        return model.dims.n_layers - 1
    return -1 if None in layers else min(layers)


def _chunks(model, groups: Sequence[Group], per_forward: int, share: bool) -> list[tuple[dict | None, list[int]]]:
    """(copies {layer: n} for `CopyRows`, or None to repeat the inputs; group indices) per
    forward, at most `per_forward` groups each, sorted by first layer: copy c is group idx[c]."""
    firsts = [first_layer(model, g) if share else -1 for g in groups]
    tiled = [i for i, f in enumerate(firsts) if f < 0]
    joined = sorted((i for i, f in enumerate(firsts) if f >= 0), key=firsts.__getitem__)
    out: list[tuple[dict | None, list[int]]] = [
        (None, tiled[s : s + per_forward]) for s in range(0, len(tiled), per_forward)
    ]
    for start in range(0, len(joined), per_forward):
        idx = joined[start : start + per_forward]
        out.append((dict(Counter(firsts[i] for i in idx)), idx))
    return out


def _forward(
    model,
    chunk: Sequence[Group],
    copies: dict | None,
    source: dict[str, Tensor],
    base: Tensor,
    mask: Tensor,
    extra: Sequence[E.Edit],
    logit_positions: Tensor | None,
    prefix: PrefixState | None = None,
) -> Tensor:
    """Logits [copies x prompts, (pos,) vocab] of one forward carrying `chunk`'s patches;
    with `prefix`, only the positions after it run, attending to its KV cache (prefix.py)."""
    tile = 1 if copies else len(chunk)
    plans: list[Plan] = [CopyRows(copies)] if copies else []
    if prefix is not None:
        chunk, source, base, mask, logit_positions = after(prefix.length, chunk, source, base, mask, logit_positions)
        plans.append(PastPrefix(prefix, multiples(copies, tile, model.dims.n_layers)))
    by_site: dict[str, list] = defaultdict(list)
    for copy, group in enumerate(chunk):
        for p in group:
            by_site[p.site].append((copy, p.position, p.head))
    last = max(copies) if copies else -1
    edits = [
        _site_edit(model, site, picks, source[site], int(copies is not None and model.table[site].layer < last))
        for site, picks in by_site.items()
    ]
    plans += [] if logit_positions is None else [GatherLogits(logit_positions.repeat(tile))]
    with torch.no_grad():
        logits = model.run(
            base.repeat(tile, 1), attention_mask=mask.repeat(tile, 1), edits=[*extra, *edits], plans=plans
        ).logits
    if prefix is not None and prefix.logits is not None and logit_positions is None:  # every position read
        before = prefix.logits.repeat(logits.shape[0] // len(prefix.logits), 1, 1)
        logits = torch.cat([before, logits], 1)
    return logits


def read_positions(metric: Metric, task: Task) -> Tensor | None:
    """The one position per row the metric reads, when it declares them for this task."""
    ok = metric.positions is not None and len(metric.positions) == len(task)
    return metric.positions if ok else None


def run_groups(
    model,
    task: Task,
    groups: Sequence[Group],
    source: dict[str, Tensor],
    base: Tensor,
    metric: Metric,
    batch_size: int | None = None,
    progress: bool = False,
    extra: Sequence[E.Edit] = (),
    share: bool = True,
    prefix: int | PrefixState = 0,
) -> Tensor:
    """The metric of each group's patched run: `base` tokens, `source` activations written
    at the group's patches. Groups ride the batch dimension, `batch_size` rows a forward.

    share=True skips work every copy shares: a copy joins the forward at its first patched
    block (`hooks.CopyRows`), the blocks before it run once per prompt, and the
    unembedding runs only where the metric reads (`Metric.positions`, `hooks.GatherLogits`). `extra` edits must
    treat every copy alike: they see the prompt rows and the copies joined so far.

    prefix=P > 0 (with share, without `extra`): the caller has checked that the first P
    positions are the same in every copy (`prefix.shared_prefix`); they run once into a KV
    cache and each forward computes only the rest (prefix.py; whole runs where the model's
    cache cannot be shared). A `PrefixState` gives that cache already made."""
    if batch_size is not None and batch_size < 1:
        raise MechscopeError(f"batch_size must be at least 1 (rows per forward), got {batch_size}")
    rows = len(task)
    per_forward = max(1, (batch_size or 128) // rows)
    mask = task.attention_mask()
    positions = read_positions(metric, task) if share else None
    values = torch.zeros(len(groups))
    state = prefix if isinstance(prefix, PrefixState) else None
    if isinstance(prefix, int) and prefix > 0 and share and not extra:
        state = run_prefix(model, base, mask, prefix, positions is None)
    for copies, idx in tqdm(
        _chunks(model, groups, per_forward, share), desc="patching", disable=not progress, leave=False
    ):
        logits = _forward(model, [groups[i] for i in idx], copies, source, base, mask, extra, positions, state)
        for c, i in enumerate(idx):
            values[i] = metric(logits[c * rows : (c + 1) * rows]).detach().float().cpu()
    return values


def pos_labels(model, tokens: Tensor, positions: list[int]) -> list[str]:
    if model.tokenizer is None:
        return [f"{p}:{int(tokens[p])}" for p in positions]
    return [f"{p}:{visible(model.tokenizer.decode([int(tokens[p])]))}" for p in positions]


def sweep(
    model,
    task: Task,
    metric: Metric | MetricFn,
    *,
    sweep: str = "resid",
    direction: str = "denoise",
    positions: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    share: bool = True,
    prefix: bool = True,
) -> PatchResult:
    """Exact activation patching of every (layer, position), (layer, head) or (layer,
    head, position) of one kind of site; see `PatchResult.scores` for the normalisation.

    sweep: resid (`hook_resid_pre`), attn (`hook_attn_out`), mlp (`hook_mlp_out`), heads
    (`attn.hook_z`, all positions at once), heads-pos (`attn.hook_z` per position).
    positions: absolute positions to sweep (default all). batch_size: rows per forward
    (patches x prompts; default 128). share=False runs every patched copy through the
    whole model (the same numbers, slower; see `run_groups`). prefix=True (with share) runs
    the positions before the first token where clean and corrupted prompts differ once, into
    a KV cache, and every patched copy only from there (prefix.py; equal within 1e-5).
    """
    check_direction(direction)
    metric = as_metric(metric)
    patches, axes, shape, chosen = plan(model, sweep, task.clean.shape[1], positions)
    sites = sorted({p.site for p in patches}, key=model.table.order.__getitem__)
    read = read_positions(metric, task) if share else None
    capture = CaptureCache()  # the joint run's KV cache: the base rows' prefix comes from it
    clean, corrupt = record(model, task, sites, read, plans=[capture] if share and prefix and shareable(model) else [])
    with torch.no_grad():
        m_clean, m_corrupt = float(metric(clean.logits)), float(metric(corrupt.logits))
    source, base = (clean, task.corrupt) if direction == "denoise" else (corrupt, task.clean)
    base_run, m_base = (corrupt, m_corrupt) if direction == "denoise" else (clean, m_clean)
    same = unchanged(patches, source.cache, base_run.cache) | unread(model, patches, read)
    values = torch.full((len(patches),), m_base)
    todo = [p for p, s in zip(patches, same.tolist()) if not s]
    n = (
        shared_prefix(task.clean, task.corrupt, task.attention_mask(), source.cache, base_run.cache, sites, read)
        if share and prefix
        else 0
    )
    rows = slice(len(task), 2 * len(task)) if direction == "denoise" else slice(0, len(task))
    state = from_cache(model, capture.cache, rows, n, base_run.logits if read is None else None) if n else None
    if todo:
        values[~same] = run_groups(
            model,
            task,
            [(p,) for p in todo],
            source.cache,
            base,
            metric,
            batch_size,
            progress,
            share=share,
            prefix=state or 0,
        )
    values = values.reshape(shape)
    scores, normalized = normalise(values, m_clean, m_corrupt, direction)
    if not normalized:
        log.warning(
            "clean and corrupted runs give the same %s (%.4g): scores are raw differences", metric.name, m_clean
        )
    return PatchResult(
        model.name,
        sweep,
        direction,
        "exact",
        metric.name,
        axes,
        scores,
        values,
        m_clean,
        m_corrupt,
        normalized,
        chosen,
        pos_labels(model, task.clean[0], chosen),
    )


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
