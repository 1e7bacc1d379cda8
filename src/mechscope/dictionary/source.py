"""Activations streamed from a model running over token contexts, for training dictionaries.

    data = load_tokens(DataConfig("corpus/*.jsonl", ctx_len=128), model.tokenizer)
    source = ActivationSource(model, ["blocks.2.hook_resid_post", "blocks.3.hook_resid_post"], data.train)
    for batch, position in source.batches():      # batch: {site: [batch_tokens, d_in]}
        ...

One forward pass feeds every recorded site (several dictionaries train from it). The model
stops after the last recorded site (`logits=False`).

Order, and why resuming is exact: the contexts are visited in a seeded order, one epoch
after another; consecutive groups of `buffer_contexts` contexts form *blocks*. A block's
activations (first position of each context and `exclude_tokens` dropped) are shuffled with
a generator seeded by (seed, block index) and read in that order. A position in the stream
is therefore just `[block, offset]` (the next unread token), and the batches read from a
position are a pure function of it: a checkpoint stores the position and resuming rebuilds
the same block and skips to the same token.

Under DDP each rank rebuilds the whole block (the shuffle mixes every context of it) and
keeps its own disjoint slice of every global batch; an on-disk cache (`cache.py`) avoids
the repeated forward passes.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import MechscopeError

log = logging.getLogger(__name__)

Batch = dict[str, Tensor]
"""Site name -> activations [tokens, d_in] (float32)."""


@dataclass(frozen=True)
class SourceConfig:
    """How token contexts become batches of activations."""

    batch_tokens: int = 4096
    """Tokens per batch (the global batch: all ranks together)."""
    model_batch: int = 32
    """Contexts per forward pass of the model."""
    buffer_contexts: int = 256
    """Contexts whose activations are shuffled together (one block)."""
    exclude_first: bool = True
    """Drop the first position of every context (its norm is far from typical: attention sink / BOS)."""
    exclude_tokens: tuple[int, ...] = ()
    """Token ids whose positions are dropped (e.g. BOS, EOS or padding ids)."""
    seed: int = 0
    """Seeds the order of contexts and the shuffle within each block."""

    def __post_init__(self):
        for name in ("batch_tokens", "model_batch", "buffer_contexts"):
            if getattr(self, name) < 1:
                raise MechscopeError(f"{name} must be at least 1, got {getattr(self, name)}")


def site_width(model, site: str) -> int:
    """Features per token at `site` (head dimensions flattened); unknown sites raise."""
    info = model.table[site]
    if info.dims[:2] != ("batch", "pos") or any(s is None for s in info.sizes[2:]):
        raise MechscopeError(
            f"'{site}' has dims {info.dims}: dictionaries read sites shaped [batch, pos, ...] "
            "(residual stream, attention/MLP outputs, hook_z, ...), not attention patterns"
        )
    return math.prod(info.sizes[2:])


def resolve_sites(model, sites: str | Sequence[str]) -> list[str]:
    """Site names (globs expanded) in forward order, each checked to be readable by a dictionary."""
    names = model.table.resolve(sites)
    for name in names:
        site_width(model, name)
    return names


def keep_mask(ids: Int[Tensor, "batch pos"], cfg: SourceConfig) -> Tensor:
    """True at the positions whose activations are kept."""
    keep = torch.ones_like(ids, dtype=torch.bool)
    if cfg.exclude_first:
        keep[:, 0] = False
    for t in cfg.exclude_tokens:
        keep &= ids != t
    return keep


def record(model, sites: Sequence[str], ids: Int[Tensor, "batch pos"], cfg: SourceConfig) -> Batch:
    """Activations of the kept positions of `ids`, [tokens, d_in] float32 per site, in
    row-major (context, position) order; forward passes of `cfg.model_batch` contexts."""
    keep = keep_mask(ids, cfg)
    out: dict[str, list[Tensor]] = {s: [] for s in sites}
    for i in range(0, len(ids), cfg.model_batch):
        chunk = ids[i : i + cfg.model_batch]
        run = model.run(chunk, record=list(sites), logits=False)
        rows = keep[i : i + cfg.model_batch].to(run.tokens.device)
        for s in sites:
            value = run.cache[s]
            out[s].append(value.flatten(2)[rows].float().cpu())
    return {s: torch.cat(v) for s, v in out.items()}


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def contexts_of_block(n: int, block: int, size: int, seed: int) -> Tensor:
    """Indices of the contexts in `block`: consecutive slots of the seeded epoch orders."""
    slots = torch.arange(block * size, (block + 1) * size)
    epochs = slots // n
    return torch.cat([_epoch_order(n, seed, int(e))[slots[epochs == e] % n] for e in epochs.unique()])


def rank_slice(rows: int, rank: int, world: int) -> slice:
    """This rank's contiguous share of a global batch of `rows` (rows must divide evenly)."""
    if rows % world:
        raise MechscopeError(f"a batch of {rows} tokens does not divide among {world} ranks: choose a multiple")
    per = rows // world
    return slice(rank * per, (rank + 1) * per)


class ActivationSource:
    """Shuffled batches of activations of one or more sites, read from a model over contexts."""

    def __init__(
        self, model, sites: str | Sequence[str], contexts: Int[Tensor, "n ctx"], cfg: SourceConfig = SourceConfig()
    ):
        self.model, self.cfg = model, cfg
        self.sites = resolve_sites(model, sites)
        self.widths = {s: site_width(model, s) for s in self.sites}
        if contexts.dim() != 2 or len(contexts) == 0:
            raise MechscopeError(
                f"contexts must be a non-empty [n, ctx] tensor of token ids, got shape {tuple(contexts.shape)}"
            )
        self.contexts = contexts
        self._built: tuple[int, Batch] | None = None

    @property
    def start(self) -> list[int]:
        return [0, 0]

    @property
    def batch_tokens(self) -> int:
        return self.cfg.batch_tokens

    def block(self, index: int) -> Batch:
        """Activations of block `index`, shuffled (seeded by (seed, index))."""
        if self._built is not None and self._built[0] == index:
            return self._built[1]
        cfg = self.cfg
        rows = contexts_of_block(len(self.contexts), index, cfg.buffer_contexts, cfg.seed)
        acts = record(self.model, self.sites, self.contexts[rows], cfg)
        n = len(next(iter(acts.values())))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7_919 + index + 1))
        acts = {s: a[perm] for s, a in acts.items()}
        self._built = (index, acts)
        return acts

    def batches(
        self, position: Sequence[int] | None = None, *, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[Batch, list[int]]]:
        """Endless (batch, position after it) from `position` ([block, offset]); the batch
        holds this rank's slice of the global batch."""
        block, offset = position or self.start
        share = rank_slice(self.cfg.batch_tokens, rank, world)
        acts, empty = self.block(block), 0
        while True:
            need, pieces = self.cfg.batch_tokens, []
            while need:
                n = len(next(iter(acts.values())))
                take = min(need, n - offset)
                pieces.append({s: a[offset : offset + take] for s, a in acts.items()})
                offset, need = offset + take, need - take
                if offset >= n:
                    empty = empty + 1 if n == 0 else 0
                    if empty > 3:
                        raise MechscopeError(
                            "several blocks in a row kept no token: exclude_first/exclude_tokens "
                            "drop every position; use longer contexts or exclude fewer tokens"
                        )
                    block, offset = block + 1, 0
                    acts = self.block(block)
            batch = {s: torch.cat([p[s] for p in pieces])[share] for s in self.sites}
            yield batch, [block, offset]


def first_batches(stream, n: int) -> Batch:
    """The first `n` global batches of a stream, joined (for norm estimation and init)."""
    it = stream.batches(stream.start)
    parts = [next(it)[0] for _ in range(n)]
    return {s: torch.cat([p[s] for p in parts]) for s in parts[0]}


def estimate_norm_scale(x: Float[Tensor, "tokens d_in"]) -> float:
    """sqrt(d_in) / mean L2 norm: the factor that gives inputs an average norm of sqrt(d_in)."""
    mean_norm = float(x.float().norm(dim=-1).mean())
    if not math.isfinite(mean_norm) or mean_norm <= 0:
        raise MechscopeError(
            f"the activations' mean norm is {mean_norm}: cannot normalise inputs "
            "(is the site constant zero, or are there NaNs upstream?)"
        )
    return math.sqrt(x.shape[-1]) / mean_norm
