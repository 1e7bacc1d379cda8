"""`Accumulator`: per-latent statistics gathered in one streaming pass, exactly mergeable.

Every statistic is a pure function of the set of (token index, latent, activation) triples,
never of the order or batching in which they arrive, so a build in two halves equals a build
at once and a build resumed from a checkpoint equals one never stopped:

- count, sum: non-zero activations (a latent is active where its activation is > 0); the sum
  is kept exactly, in fixed point (`fixed_point`), so that sums added in any grouping (the
  ranks of a distributed build, `merge`) are the same bits;
- hist: counts in fixed log-spaced bins (HIST_LO..HIST_HI decades, BINS_PER_DECADE per decade;
  values beyond the ends fall into the end bins), so heights sum to `count`;
- top-k: the k largest activations, ties broken by the earlier token (exact, not sampled),
  each with its window of tokens and that latent's activation at every window position, and
  the other latents active at that token (the co-occurring latents);
- samples: per latent and sample bin (SAMPLE_GROUP histogram bins), the `samples` triples of
  lowest hash priority — a uniform random sample that does not depend on arrival order.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .config import BuildConfig

HIST_LO, HIST_HI, BINS_PER_DECADE = -4, 4, 10
N_BINS = (HIST_HI - HIST_LO) * BINS_PER_DECADE
SAMPLE_GROUP = 5
"""Histogram bins per sample bin (half a decade)."""
N_SAMPLE_BINS = N_BINS // SAMPLE_GROUP
EMPTY = torch.iinfo(torch.int64).max
_M1, _M2, _M3 = 0x1E3779B97F4A7C15, 0x42B2AE3D27D4EB4F, 0x7F51AFD7ED558CCD
SUM_BITS, LIMB_BITS = 40, 32
"""The sum of activations is an integer count of 2**-SUM_BITS (9e-13) units, in two int64
limbs of LIMB_BITS: exact for any order of addition, unlike a float sum."""
SUM_CAP = 2.0**23
"""Activations above this count as this much in the sum (it keeps one fixed-point value in int64)."""
_LIMB_MASK = (1 << LIMB_BITS) - 1


def bin_edges() -> Float[Tensor, " edge"]:
    """The N_BINS + 1 histogram edges (the first and last bins also hold values beyond them)."""
    return torch.logspace(HIST_LO, HIST_HI, N_BINS + 1, dtype=torch.float64)


def bin_of(values: Tensor) -> Tensor:
    b = torch.floor((torch.log10(values.double()) - HIST_LO) * BINS_PER_DECADE)
    return b.clamp(0, N_BINS - 1).to(torch.int64)


def fixed_point(values: Tensor) -> tuple[Tensor, Tensor]:
    """Non-negative values as (high, low) int64 limbs of floor(value * 2**SUM_BITS): float32
    values scaled by a power of two are exact in float64, so only the floor rounds."""
    q = torch.floor(values.double().clamp(0, SUM_CAP - 1) * 2.0**SUM_BITS).to(torch.int64)
    return q >> LIMB_BITS, q & _LIMB_MASK


def priority(index: Tensor, latent: Tensor) -> Tensor:
    """A pseudo-random, non-negative int64 per (token index, latent) (splitmix-style mixing)."""
    x = index * _M1 + latent * _M2
    x = x ^ (x >> 29)
    x = x * _M3
    x = x ^ (x >> 32)
    return x & 0x7FFFFFFFFFFFFFFF


def first_k(segment: Tensor, order_key: Tensor, k: int, descending: bool) -> tuple[Tensor, Tensor]:
    """Indices (into the inputs) of the first k items of each segment after a stable sort by
    `order_key` (ties keep input order), and each kept item's rank within its segment."""
    by_key = torch.sort(order_key, descending=descending, stable=True).indices
    by_seg = by_key[torch.sort(segment[by_key], stable=True).indices]
    seg = segment[by_seg]
    starts = torch.searchsorted(seg, seg, right=False)
    rank = torch.arange(len(seg)) - starts
    keep = rank < k
    return by_seg[keep], rank[keep]


def top_order(val: Tensor, idx: Tensor) -> Tensor:
    """Per row, the slots strongest first, earlier token first on ties, empty slots (idx -1) last."""
    key_idx = torch.where(idx >= 0, idx, torch.iinfo(torch.int64).max)
    by_token = torch.argsort(key_idx, dim=1, stable=True)
    vals = torch.where(idx >= 0, val, -torch.inf).gather(1, by_token)
    return by_token.gather(1, torch.argsort(vals, dim=1, descending=True, stable=True))


def take(a: Tensor, order: Tensor) -> Tensor:
    """`a` [rows, slots, ...] with each row's slots picked by `order` [rows, n]."""
    index = order.view(*order.shape, *([1] * (a.dim() - 2))).expand(*order.shape, *a.shape[2:])
    return a.gather(1, index)


class Accumulator:
    """Running statistics of `d_sae` latents (see the module docstring)."""

    def __init__(self, d_sae: int, cfg: BuildConfig):
        self.cfg, self.d = cfg, d_sae
        k, w, s, m = cfg.k, cfg.window, cfg.samples, cfg.co_active
        self.n_tokens = 0
        self.count = torch.zeros(d_sae, dtype=torch.int64)
        self.total = torch.zeros(d_sae, dtype=torch.float64)  # from the limbs below, for readers
        self.total_hi = torch.zeros(d_sae, dtype=torch.int64)
        self.total_lo = torch.zeros(d_sae, dtype=torch.int64)
        self.hist = torch.zeros(d_sae, N_BINS, dtype=torch.int64)
        self.top_val = torch.zeros(d_sae, k)
        self.top_idx = torch.full((d_sae, k), -1, dtype=torch.int64)
        self.top_acts = torch.zeros(d_sae, k, w)
        self.top_toks = torch.full((d_sae, k, w), -1, dtype=torch.int32)
        self.co_ids = torch.full((d_sae, k, m), -1, dtype=torch.int32)
        self.co_val = torch.zeros(d_sae, k, m)
        self.s_pri = torch.full((d_sae, N_SAMPLE_BINS, s), EMPTY, dtype=torch.int64)
        self.s_idx = torch.full((d_sae, N_SAMPLE_BINS, s), -1, dtype=torch.int64)
        self.s_val = torch.zeros(d_sae, N_SAMPLE_BINS, s)

    STATE = (
        "count",
        "total",
        "total_hi",
        "total_lo",
        "hist",
        "top_val",
        "top_idx",
        "top_acts",
        "top_toks",
        "co_ids",
        "co_val",
        "s_pri",
        "s_idx",
        "s_val",
    )

    def state(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.STATE}

    def load(self, state: dict[str, Tensor], n_tokens: int) -> Accumulator:
        if "total_hi" not in state:  # a state saved before the sum was fixed-point: take its float sum
            hi = torch.floor(state["total"] * 2.0 ** (SUM_BITS - LIMB_BITS))
            lo = torch.floor((state["total"] * 2.0 ** (SUM_BITS - LIMB_BITS) - hi) * 2.0**LIMB_BITS)
            state = {**state, "total_hi": hi.to(torch.int64), "total_lo": lo.to(torch.int64)}
        for name in self.STATE:
            if tuple(state[name].shape) != tuple(getattr(self, name).shape):
                raise ValueError(f"state tensor {name} has shape {list(state[name].shape)}")
            setattr(self, name, state[name].clone())
        self.n_tokens = n_tokens
        self.carry()
        return self

    def carry(self) -> None:
        """Move the low limbs' overflow into the high ones, and `total` from the limbs."""
        self.total_hi += self.total_lo >> LIMB_BITS
        self.total_lo &= _LIMB_MASK
        self.total = self.total_hi.double() * 2.0 ** (LIMB_BITS - SUM_BITS) + self.total_lo.double() * 2.0**-SUM_BITS

    def canonical(self) -> Accumulator:
        """Each top-k list in rank order (its slots otherwise keep the order entries came in):
        a build's final state is then a function of its statistics alone."""
        vars(self).update(self.sorted_top())
        return self

    @torch.no_grad()
    def update(
        self, acts: Float[Tensor, "batch pos d_sae"], tokens: Int[Tensor, "batch pos"], at: int | None = None
    ) -> None:
        """Add one batch of contexts. `at`: the corpus index of its first token (by default
        right after every token added so far); one rank of a distributed build gives it, its
        batches being every world-th one, and adds them in corpus order."""
        b, p, d = acts.shape
        start = self.n_tokens if at is None else at
        flat = acts.reshape(b * p, d).float()
        t, lat = (flat > 0).nonzero().unbind(1)  # row-major: token order within each latent
        val = flat[t, lat]
        gidx = t + start
        self.count += torch.bincount(lat, minlength=d)
        hi, lo = fixed_point(val)
        self.total_hi.index_add_(0, lat, hi)
        self.total_lo.index_add_(0, lat, lo)  # < 2**32 each: no overflow in a batch of < 2**31 tokens
        self.carry()
        bins = bin_of(val)
        self.hist += torch.bincount(lat * N_BINS + bins, minlength=d * N_BINS).view(d, N_BINS)
        self._top(flat, tokens, (t, lat, val), p, start)
        self._samples(gidx, lat, val, bins)
        self.n_tokens = start + b * p

    def _top(self, flat: Tensor, tokens: Tensor, active: tuple[Tensor, Tensor, Tensor], p: int, start: int) -> None:
        """Merge the batch into the top-k lists. A list's k slots are unordered (`sorted_top`
        orders them): an entering activation takes the slot of the one it pushes out, so only
        entering entries write their windows."""
        k = self.cfg.k
        t, lat, val = active
        pick, _ = first_k(lat, val, k, descending=True)  # the batch's own top-k: fewer to merge
        t, lat, val = t[pick], lat[pick], val[pick]
        # only a value above a full list's least one can enter (on a tie the earlier token stays)
        full = (self.top_idx >= 0).all(dim=1)
        floor = torch.where(full, self.top_val.min(dim=1).values, -torch.inf)
        enter = val > floor[lat]
        t, lat, val = t[enter], lat[enter], val[enter]
        if len(lat) == 0:
            return
        rows = torch.unique(lat)  # the latents whose lists change
        old_row, old_slot = (self.top_idx[rows] >= 0).nonzero().unbind(1)
        order = torch.argsort(self.top_idx[rows[old_row], old_slot], stable=True)  # old entries by token
        old_row, old_slot = old_row[order], old_slot[order]
        n_old = len(old_row)
        all_l = torch.cat([rows[old_row], lat])
        all_v = torch.cat([self.top_val[rows[old_row], old_slot], val])
        keep, _ = first_k(all_l, all_v, k, descending=True)  # by token within ties: earlier tokens win
        kept = torch.zeros(len(rows), k, dtype=torch.bool)
        kept_old = keep[keep < n_old]
        kept[old_row[kept_old], old_slot[kept_old]] = True
        free_row, free_slot = (~kept).nonzero().unbind(1)  # row-major: each row's free slots in order
        free_rank = torch.arange(len(free_row)) - torch.searchsorted(free_row, free_row)
        fresh = keep[keep >= n_old] - n_old
        tf, lf, vf = t[fresh], lat[fresh], val[fresh]
        by_row = torch.argsort(lf, stable=True)
        tf, lf, vf = tf[by_row], lf[by_row], vf[by_row]
        new_row = torch.searchsorted(rows, lf)
        new_rank = torch.arange(len(new_row)) - torch.searchsorted(new_row, new_row)
        slot = free_slot[torch.searchsorted(free_row * k + free_rank, new_row * k + new_rank)]
        dst = (lf, slot)
        self.top_val[dst], self.top_idx[dst] = vf, tf + start
        self.top_acts[dst], self.top_toks[dst] = self._windows(flat, tokens, tf, lf, p)
        self.co_ids[dst], self.co_val[dst] = self._co_active(active, tf, lf)

    TOP = ("top_val", "top_idx", "top_acts", "top_toks", "co_ids", "co_val")
    """The arrays of the top-k lists (slot j of each is one entry)."""

    def sorted_top(self) -> dict[str, Tensor]:
        """The top-k arrays with each latent's slots ordered: strongest first, earlier token first on ties."""
        order = top_order(self.top_val, self.top_idx)
        return {name: take(getattr(self, name), order) for name in self.TOP}

    def _windows(self, flat: Tensor, tokens: Tensor, t: Tensor, lat: Tensor, p: int) -> tuple[Tensor, Tensor]:
        """Each entry's window: the latent's activation and the token at every position (-1 outside the context)."""
        offsets = torch.arange(-self.cfg.before, self.cfg.after + 1)
        pos = (t % p)[:, None] + offsets
        inside = (pos >= 0) & (pos < p)
        rows = (t - t % p)[:, None] + pos.clamp(0, p - 1)
        acts = torch.where(inside, flat[rows, lat[:, None]], 0.0)
        toks = torch.where(inside, tokens.reshape(-1)[rows], -1).to(torch.int32)
        return acts, toks

    def _co_active(self, active: tuple[Tensor, Tensor, Tensor], t: Tensor, lat: Tensor) -> tuple[Tensor, Tensor]:
        """The `co_active` strongest other latents at each entry's token, from the batch's
        non-zero triples (never a top-k over a dense row of d_sae)."""
        m = self.cfg.co_active
        ids = torch.full((len(t), m), -1, dtype=torch.int32)
        vals = torch.zeros(len(t), m)
        if m == 0 or len(t) == 0:
            return ids, vals
        all_t, all_l, all_v = active
        tokens, where = torch.unique(t, return_inverse=True)
        sel = torch.isin(all_t, tokens)
        st, sl, sv = all_t[sel], all_l[sel], all_v[sel]
        pick, rank = first_k(st, sv, m + 1, descending=True)
        table_ids = torch.full((len(tokens), m + 1), -1, dtype=torch.int64)
        table_val = torch.full((len(tokens), m + 1), -1.0)
        row = torch.searchsorted(tokens, st[pick])
        table_ids[row, rank], table_val[row, rank] = sl[pick], sv[pick]
        cand_ids, cand_val = table_ids[where], table_val[where]
        cand_val = torch.where(cand_ids == lat[:, None], -2.0, cand_val)  # the latent itself goes last
        order = torch.sort(cand_val, dim=-1, descending=True, stable=True).indices[:, :m]
        cand_ids, cand_val = cand_ids.gather(1, order), cand_val.gather(1, order)
        ids[:, : cand_ids.shape[1]] = torch.where(cand_val > 0, cand_ids, -1).to(torch.int32)
        vals[:, : cand_val.shape[1]] = cand_val.clamp_min(0)
        return ids, vals

    def _samples(self, gidx: Tensor, lat: Tensor, val: Tensor, bins: Tensor) -> None:
        s = self.cfg.samples
        if s == 0:
            return
        seg = lat * N_SAMPLE_BINS + bins // SAMPLE_GROUP
        pri = priority(gidx, lat)
        pick, _ = first_k(seg, pri, s, descending=False)
        seg, pri, gidx, val = seg[pick], pri[pick], gidx[pick], val[pick]
        flat_pri, flat_idx, flat_val = self.s_pri.view(-1, s), self.s_idx.view(-1, s), self.s_val.view(-1, s)
        enter = pri < flat_pri[seg, -1]  # below the largest kept priority (EMPTY where a slot is free)
        seg, pri, gidx, val = seg[enter], pri[enter], gidx[enter], val[enter]
        if len(seg) == 0:
            return
        rows = torch.unique(seg)
        old_row, old_slot = (flat_idx[rows] >= 0).nonzero().unbind(1)
        old_seg = rows[old_row]
        all_seg = torch.cat([old_seg, seg])
        all_pri = torch.cat([flat_pri[old_seg, old_slot], pri])
        all_idx = torch.cat([flat_idx[old_seg, old_slot], gidx])
        all_val = torch.cat([flat_val[old_seg, old_slot], val])
        keep, rank = first_k(all_seg, all_pri, s, descending=False)
        dst = (torch.searchsorted(rows, all_seg[keep]), rank)
        new_pri = torch.full((len(rows), s), EMPTY, dtype=torch.int64)
        new_idx = torch.full((len(rows), s), -1, dtype=torch.int64)
        new_val = torch.zeros(len(rows), s)
        new_pri[dst], new_idx[dst], new_val[dst] = all_pri[keep], all_idx[keep], all_val[keep]
        flat_pri[rows], flat_idx[rows], flat_val[rows] = new_pri, new_idx, new_val
