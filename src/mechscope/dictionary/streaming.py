"""Training from an activation cache larger than memory: shards streamed from disk.

    reader = ShardStream("runs/acts", batch_tokens=4096, seed=0, window_shards=2, max_shards=4)
    for batch, step in reader.batches():          # {site: [4096, d_in]}, step index

`CacheReader` shuffles all rows of the cache at once, so every batch touches pages all over
the disk; from a cache larger than memory that is random I/O. Here the order is made of
*windows* (`ShardOrder`): each epoch visits the shards in a seeded order, cut into groups of
`window_shards` consecutive shards; a window's rows are shuffled among themselves (seeded by
(seed, epoch, window)) and read before the next window's. Rows therefore mix across the
`window_shards` shards of a window and, because the shard order changes every epoch, across
different shards each epoch. Batch `step` is slots `step * batch_tokens ...` of that endless
sequence: a pure function of (seed, window_shards, step), so resuming at a step is exact.

Memory: shards are read whole (sequential reads) by a background thread, in their stored
dtype, and no more than `max_shards` of them are held at once (the window being read plus,
when `max_shards >= 2 * window_shards`, the next one loading). `in_memory=True` holds the
whole cache and reads the same order by global row index (`ShardOrder.rows_for_step`): the
two paths give the same batches, bit for bit (the tests check it).
"""

from __future__ import annotations

import functools
import queue
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import MechscopeError
from .cache import CacheReader, as_float, shard_name
from .source import Batch, rank_slice


def _gen(*parts: int) -> torch.Generator:
    seed = 0
    for p in parts:  # a fixed mix of the parts (not Python's salted hash)
        seed = (seed * 1_000_003 + p) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


class ShardOrder:
    """The windowed shuffle of a cache's rows: which global rows batch `step` holds."""

    def __init__(self, sizes: Sequence[int], window_shards: int, seed: int):
        if window_shards < 1:
            raise MechscopeError(f"window_shards must be at least 1, got {window_shards}")
        self.sizes, self.window, self.seed = [int(s) for s in sizes], window_shards, seed
        self.offsets = np.cumsum([0, *self.sizes])
        self.n = int(self.offsets[-1])

    @functools.lru_cache(maxsize=4)
    def windows(self, epoch: int) -> list[list[int]]:
        """The shard indices of each window of `epoch`, in reading order."""
        order = torch.randperm(len(self.sizes), generator=_gen(self.seed, 1, epoch)).tolist()
        return [order[i : i + self.window] for i in range(0, len(order), self.window)]

    @functools.lru_cache(maxsize=8)
    def permutation(self, epoch: int, w: int) -> Tensor:
        """The shuffle of window `w`'s rows (indices into its shards' rows, concatenated)."""
        rows = sum(self.sizes[s] for s in self.windows(epoch)[w])
        return torch.randperm(rows, generator=_gen(self.seed, 2, epoch, w))

    def window_rows(self, epoch: int, w: int) -> Tensor:
        """Global row indices of window `w` of `epoch`, in reading order."""
        base = torch.cat([torch.arange(self.offsets[s], self.offsets[s + 1]) for s in self.windows(epoch)[w]])
        return base[self.permutation(epoch, w)]

    def locate(self, slot: int) -> tuple[int, int, int]:
        """(epoch, window, offset within the window) of a slot of the endless sequence."""
        epoch, rest = divmod(slot, self.n)
        for w, shards in enumerate(self.windows(epoch)):
            size = sum(self.sizes[s] for s in shards)
            if rest < size:
                return epoch, w, rest
            rest -= size
        raise AssertionError("a slot within an epoch lies in one of its windows")

    def following(self, epoch: int, w: int) -> tuple[int, int]:
        return (epoch, w + 1) if w + 1 < len(self.windows(epoch)) else (epoch + 1, 0)

    def rows_for_step(self, step: int, batch: int) -> Tensor:
        """Global row indices of batch `step` (the in-memory path and the tests' oracle)."""
        epoch, w, offset = self.locate(step * batch)
        parts, need = [], batch
        while need:
            rows = self.window_rows(epoch, w)[offset:]
            parts.append(rows[:need])
            need -= len(parts[-1])
            epoch, w = self.following(epoch, w)
            offset = 0
        return torch.cat(parts)


class _Mapped(Sequence[np.ndarray]):
    """A site's shards, each memory-mapped the first time it is indexed."""

    def __init__(self, folder: Path, n: int):
        self.folder, self.n = folder, n
        self.maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if i not in self.maps:
            self.maps[i] = np.load(self.folder / shard_name(i), mmap_mode="r")
        return self.maps[i]


class _Window:
    """One window's rows, in stored dtype, with its shuffle: the unit the reader holds."""

    def __init__(self, data: dict[str, Tensor], perm: Tensor, shards: int):
        self.data, self.perm, self.shards = data, perm, shards

    def take(self, start: int, stop: int) -> Batch:
        index = self.perm[start:stop]
        return {s: as_float(a[index]) for s, a in self.data.items()}


class ShardStream(CacheReader):
    """Batches from a cache folder in the windowed shard order, streamed (at most
    `max_shards` shards in memory, read ahead by a background thread) or, with
    in_memory=True, from the whole cache held at once."""

    def __init__(
        self,
        folder: str | Path,
        *,
        batch_tokens: int = 4096,
        seed: int = 0,
        sites: Sequence[str] | None = None,
        window_shards: int = 1,
        max_shards: int = 2,
        in_memory: bool = False,
    ):
        super().__init__(folder, batch_tokens=batch_tokens, seed=seed, sites=sites)
        if max_shards < window_shards:
            raise MechscopeError(
                f"max_shards ({max_shards}) must be at least window_shards ({window_shards}): "
                "a window's shards are held together"
            )
        self.order = ShardOrder(self.meta["shards"], window_shards, seed)
        self.max_shards, self.in_memory = max_shards, in_memory
        self.held, self.peak_held = 0, 0  # shards in memory now / at most (the tests read it)
        self._lock = threading.Lock()
        self._whole: dict[str, Tensor] | None = None

    def _map_shards(self) -> dict[str, Sequence[np.ndarray]]:
        """Shards mapped when `rows` first reads them: a cache of many thousand shards would
        otherwise hold a file descriptor per shard (Python's mmap keeps one) from the start."""
        return {s: _Mapped(self.folder / s, len(self.meta["shards"])) for s in self.sites}

    def identity(self) -> dict:
        """What decides the batches beyond the cache's rows (recorded in checkpoints)."""
        return {"order": "windowed", "window_shards": self.order.window}

    def _load_shard(self, site: str, i: int) -> Tensor:
        array = np.load(self.folder / site / shard_name(i))  # whole: one sequential read
        return torch.from_numpy(array)

    def _load_window(self, epoch: int, w: int) -> _Window:
        shards = self.order.windows(epoch)[w]
        data = {s: torch.cat([self._load_shard(s, i) for i in shards]) for s in self.sites}
        return _Window(data, self.order.permutation(epoch, w), len(shards))

    def _count(self, shards: int) -> None:
        with self._lock:
            self.held += shards
            self.peak_held = max(self.peak_held, self.held)

    def batches(self, position: int | None = None, *, rank: int = 0, world: int = 1) -> Iterator[tuple[Batch, int]]:
        """Endless (this rank's slice of batch `step`, step + 1) from step `position`."""
        step = position or 0
        share = rank_slice(self.batch_tokens, rank, world)
        if self.in_memory:
            yield from self._from_memory(step, share)
        else:
            yield from self._streamed(step, share)

    def _from_memory(self, step: int, share: slice) -> Iterator[tuple[Batch, int]]:
        if self._whole is None:
            self._whole = {
                s: torch.cat([self._load_shard(s, i) for i in range(len(self.order.sizes))]) for s in self.sites
            }
            self._count(len(self.order.sizes))
        while True:
            index = self.order.rows_for_step(step, self.batch_tokens)[share]
            step += 1
            yield {s: as_float(a[index]) for s, a in self._whole.items()}, step

    def _streamed(self, step: int, share: slice) -> Iterator[tuple[Batch, int]]:
        epoch, w, offset = self.order.locate(step * self.batch_tokens)
        reader = _Prefetcher(self, epoch, w, max(1, self.max_shards // self.order.window))
        window: _Window | None = None
        try:
            window = reader.next()
            while True:
                pieces, need = [], self.batch_tokens
                while need:
                    take = min(need, len(window.perm) - offset)
                    pieces.append(window.take(offset, offset + take))
                    offset, need = offset + take, need - take
                    if offset == len(window.perm):  # done with it: free its slot, then wait for the next
                        reader.release(window)
                        window, offset = None, 0
                        window = reader.next()
                step += 1
                yield {s: torch.cat([p[s] for p in pieces])[share] for s in self.sites}, step
        finally:
            if window is not None:
                reader.release(window)
            reader.close()


class _Prefetcher:
    """A daemon thread loading windows in order, holding at most `slots` windows at once
    (the one being read included): it takes a slot before loading and the reader gives it
    back when it is done with a window."""

    def __init__(self, stream: ShardStream, epoch: int, w: int, slots: int):
        self.stream, self.slots = stream, threading.Semaphore(slots)
        self.ready: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(epoch, w), daemon=True, name="shard-prefetch")
        self.thread.start()

    def _run(self, epoch: int, w: int) -> None:
        try:
            while not self.stop.is_set():
                if not self.slots.acquire(timeout=0.1):
                    continue
                if self.stop.is_set():
                    return
                window = self.stream._load_window(epoch, w)
                self.stream._count(window.shards)
                self.ready.put(window)
                epoch, w = self.stream.order.following(epoch, w)
        except BaseException as err:  # handed to the reader, which raises it
            self.ready.put(err)

    def next(self) -> _Window:
        item = self.ready.get()
        if isinstance(item, BaseException):
            if isinstance(item, (OSError, ValueError)):
                raise MechscopeError(
                    f"cannot read a shard of the cache in '{self.stream.folder}' ({item}): the cache is damaged; "
                    "write it again"
                ) from None
            raise item
        return item

    def release(self, window: _Window) -> None:
        self.stream._count(-window.shards)
        window.data = {}
        self.slots.release()

    def close(self) -> None:
        self.stop.set()
        self.slots.release()
        self.thread.join(timeout=30)
        while not self.ready.empty():  # windows loaded ahead and never read
            item = self.ready.get_nowait()
            if isinstance(item, _Window):
                self.stream._count(-item.shards)
