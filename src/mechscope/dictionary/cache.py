"""Activations written to disk once, read back as shuffled batches many times.

    write_cache(model, ["blocks.2.hook_resid_post"], data.train, "runs/acts")
    reader = CacheReader("runs/acts", batch_tokens=4096, seed=0)
    for batch, position in reader.batches():        # {site: [4096, d_in]}, step index

Layout: `folder/cfg.json` (model, sites, contexts, shards) and one folder per site
(`folder/blocks.2.hook_resid_post/`) holding `cfg.json` (model, site, d_in, dtype, n_tokens,
shard sizes) and shards `shard-00000.npy` ([tokens, d_in], memory-mapped when read), plus
`folder/tokens-00000.npy` (the token id of every cached row, int32). Shard i holds the kept
positions (see `SourceConfig`) of contexts [i * shard_contexts, (i + 1) * shard_contexts) in
corpus order, for every site, so rows line up across sites.

Writing is resumable: every file is written atomically and a shard whose files all exist is
skipped; the manifests are written last, once the shards are synced to disk. The writer
holds the folder's lock (`io.folder_lock`): a second writer into the same folder is refused.
Under `torchrun` rank r records shards r, r + world, ... into the one folder (a file system
every rank sees) and rank 0 writes the manifests once all are there: the cache is the same,
byte for byte, as one process writes.

Reading: `CacheReader` below shuffles the whole cache (memory-mapped); a cache larger than
memory is streamed shard by shard by `streaming.ShardStream` (another, windowed order).

`CacheReader`'s batch `step` takes the rows `step * batch_tokens ... (step + 1) * batch_tokens` of
an endless sequence of seeded epoch permutations, a pure function of (seed, epoch, step), so
resuming at a step is exact.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import mmap
from dataclasses import asdict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from ..distributed import distributed
from ..errors import MechscopeError
from ..io import folder_lock, fsync_folder, read_json, write_bytes, write_json
from .source import Batch, SourceConfig, keep_mask, rank_slice, record, resolve_sites, site_width

log = logging.getLogger(__name__)
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}
"""Stored dtypes. bfloat16 has no numpy type: its bits are stored as uint16. Half precision
halves disk and memory; its cost is the FVU of the stored activations against float32:
on zoo:pycode's blocks.2.hook_resid_post 6e-8 (float16) and 3.8e-6 (bfloat16), far below
a dictionary's own FVU (tests/dictionary/test_streaming.py bounds it on a tiny model)."""


def to_stored(values: Tensor, dtype: str) -> np.ndarray:
    """float activations as the array a shard of `dtype` holds."""
    if dtype == "bfloat16":
        return values.to(torch.bfloat16).view(torch.uint16).numpy()
    return values.numpy().astype(DTYPES[dtype])


def as_float(stored: np.ndarray | Tensor) -> Tensor:
    """Shard rows (any stored dtype; uint16 means bfloat16 bits) as a float32 tensor."""
    t = torch.from_numpy(np.ascontiguousarray(stored)) if isinstance(stored, np.ndarray) else stored
    return t.view(torch.bfloat16).float() if t.dtype == torch.uint16 else t.float()


def _save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes(path, buf.getvalue())


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


_shard = shard_name


def write_cache(
    model,
    sites: str | Sequence[str],
    contexts: Int[Tensor, "n ctx"],
    folder: str | Path,
    *,
    cfg: SourceConfig = SourceConfig(),
    shard_contexts: int = 256,
    dtype: str = "float32",
    progress: bool = False,
) -> Path:
    """Record `sites` over `contexts` into `folder` (resuming a partial cache there)."""
    if dtype not in DTYPES:
        raise MechscopeError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if shard_contexts < 1:
        raise MechscopeError(f"shard_contexts must be at least 1, got {shard_contexts}")
    folder, names = Path(folder), resolve_sites(model, sites)
    meta = {
        "model": model.name,
        "sites": names,
        "contexts": len(contexts),
        "ctx_len": contexts.shape[1],
        "contexts_sha256": hashlib.sha256(contexts.to(torch.int64).numpy().tobytes()).hexdigest(),
        "shard_contexts": shard_contexts,
        "dtype": dtype,
        "source": asdict(cfg),
    }
    meta = json.loads(json.dumps(meta))  # as it reads back (tuples become lists)
    rank, world = distributed()
    with folder_lock(folder, rank=rank, world=world):  # one writer per cache folder; a killed one's temporary files go
        _check_partial(folder, meta)  # every rank reads the same files, so all refuse alike
        if rank == 0:
            write_json(folder / "progress.json", meta)
        _barrier(world)
        _write_shards(model, names, contexts, folder, cfg, shard_contexts, dtype, progress, rank, world)
        _barrier(world)  # every rank's shards are written before rank 0 counts them
        if rank == 0:
            _write_manifests(model, names, folder, meta, -(-len(contexts) // shard_contexts))
        _barrier(world)
    return folder


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _write_manifests(model, names: list[str], folder: Path, meta: dict, n_shards: int) -> None:
    """Each site's cfg.json and the cache's, once the shards' names are synced to disk."""
    sizes = [int(np.load(folder / f"tokens-{i:05d}.npy", mmap_mode="r").shape[0]) for i in range(n_shards)]
    for place in [folder / s for s in names] + [folder]:
        fsync_folder(place)  # every shard's name is on disk before a manifest counts it
    for s in names:
        write_json(
            folder / s / "cfg.json",
            {
                "model": model.name,
                "site": s,
                "d_in": site_width(model, s),
                "dtype": meta["dtype"],
                "n_tokens": sum(sizes),
                "shards": sizes,
            },
            durable=True,
        )
    write_json(folder / "cfg.json", {**meta, "n_tokens": sum(sizes), "shards": sizes}, durable=True)
    (folder / "progress.json").unlink()


def _write_shards(
    model,
    names: list[str],
    contexts: Tensor,
    folder: Path,
    cfg: SourceConfig,
    shard_contexts: int,
    dtype: str,
    progress: bool,
    rank: int = 0,
    world: int = 1,
) -> None:
    """Record and write every shard not already there (under torchrun, rank r the shards
    r, r + world, ...: each shard is the same bytes whoever records it)."""
    from tqdm.auto import tqdm

    n_shards, done = -(-len(contexts) // shard_contexts), 0
    mine = range(rank, n_shards, world)
    for i in tqdm(mine, desc="caching activations", unit="shard", disable=not progress or rank != 0):
        paths = [folder / s / _shard(i) for s in names] + [folder / f"tokens-{i:05d}.npy"]
        if all(p.is_file() for p in paths):
            continue
        ids = contexts[i * shard_contexts : (i + 1) * shard_contexts]
        acts = record(model, names, ids, cfg)
        for s in names:
            _save_npy(folder / s / _shard(i), to_stored(acts[s], dtype))
        _save_npy(paths[-1], ids[keep_mask(ids, cfg)].to(torch.int32).numpy())
        done += 1
    log.info("cache %s (rank %d): %d shard(s) written, %d already there", folder, rank, done, len(mine) - done)


def _check_partial(folder: Path, meta: dict) -> None:
    """A folder holding another cache (or a partial one of other settings) is not overwritten."""
    for name in ("cfg.json", "progress.json"):
        path = folder / name
        if path.is_file():
            old = read_json(path)
            same = {k: old.get(k) for k in meta} == meta
            if not same:
                raise MechscopeError(
                    f"'{folder}' already holds an activation cache with other settings "
                    "(model, sites, contexts or dtype): choose another folder or delete it"
                )


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def rows_for_step(n: int, step: int, batch: int, seed: int) -> Tensor:
    """Global row indices of batch `step`: consecutive slots of seeded epoch permutations."""
    slots = torch.arange(step * batch, (step + 1) * batch)
    epochs = slots // n
    out = torch.empty(batch, dtype=torch.long)
    for e in epochs.unique():
        where = epochs == e
        out[where] = _epoch_order(n, seed, int(e))[slots[where] % n]
    return out


def read_manifest(folder: str | Path) -> dict:
    """A cache folder's cfg.json (model, sites, contexts, shards); any other folder fails here."""
    folder = Path(folder)
    manifest = folder / "cfg.json"
    if not manifest.is_file():
        hint = (
            " (writing it did not finish: run the cache command again to resume)"
            if (folder / "progress.json").is_file()
            else " (write one with `mechscope sae cache`)"
        )
        raise MechscopeError(f"'{folder}' is not an activation cache: no cfg.json{hint}")
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MechscopeError(f"cannot read {manifest} ({err}): the cache is damaged; write it again") from None
    if not isinstance(meta, dict) or not {"sites", "n_tokens", "shards"} <= set(meta):
        raise MechscopeError(
            f"'{folder}' is not an activation cache: its cfg.json lacks sites, n_tokens and shards "
            "(write one with `mechscope sae cache`)"
        )
    return meta


def _release(array: np.ndarray) -> None:
    """Unmap the pages a read touched. Shuffled reads touch pages all over the cache, and
    mapped file pages count in this process's resident memory: without this it grows with
    the corpus (413 -> 598 MB over a 16x larger cache) until the whole cache is mapped. The
    pages stay in the kernel's page cache, so reading them again costs no disk access."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


class CacheReader:
    """Seeded shuffled batches from a cache folder (every site it holds, or `sites`)."""

    def __init__(
        self, folder: str | Path, *, batch_tokens: int = 4096, seed: int = 0, sites: Sequence[str] | None = None
    ):
        self.folder = Path(folder)
        self.meta = read_manifest(folder)
        missing = [s for s in (sites or []) if s not in self.meta["sites"]]
        if missing:
            raise MechscopeError(
                f"the cache in '{folder}' has no site {missing[0]!r} (it has: {', '.join(self.meta['sites'])})"
            )
        self.sites = list(sites or self.meta["sites"])
        self.batch_tokens, self.seed = batch_tokens, seed
        self.n_tokens = int(self.meta["n_tokens"])
        if self.n_tokens == 0:
            raise MechscopeError(f"the cache in '{folder}' holds no tokens")
        self.widths = {s: int(json.loads((self.folder / s / "cfg.json").read_text())["d_in"]) for s in self.sites}
        self.offsets = np.cumsum([0, *self.meta["shards"]])
        self._maps = self._map_shards()

    def _map_shards(self) -> dict[str, Sequence[np.ndarray]]:
        """Every shard of every site, memory-mapped (`rows` reads them)."""
        return {
            s: [np.load(self.folder / s / _shard(i), mmap_mode="r") for i in range(len(self.meta["shards"]))]
            for s in self.sites
        }

    @property
    def start(self) -> int:
        return 0

    def rows(self, index: Tensor) -> Batch:
        """Cached rows by global index, in the order given, as float32 tensors."""
        order = np.argsort(index.numpy(), kind="stable")
        wanted = index.numpy()[order]
        shard = np.searchsorted(self.offsets, wanted, side="right") - 1
        out = {}
        for s in self.sites:
            touched = [int(k) for k in np.unique(shard)]
            parts = [np.asarray(self._maps[s][k][wanted[shard == k] - self.offsets[k]]) for k in touched]
            sorted_rows = as_float(np.concatenate(parts))
            for k in touched:
                _release(self._maps[s][k])
            result = torch.empty_like(sorted_rows)
            result[torch.from_numpy(order)] = sorted_rows
            out[s] = result
        return out

    def tokens(self) -> Tensor:
        """The token id of every cached row, in cache order."""
        return torch.cat(
            [
                torch.from_numpy(np.load(self.folder / f"tokens-{i:05d}.npy").astype(np.int64))
                for i in range(len(self.meta["shards"]))
            ]
        )

    def batches(self, position: int | None = None, *, rank: int = 0, world: int = 1) -> Iterator[tuple[Batch, int]]:
        """Endless (this rank's slice of batch `step`, step + 1) from step `position`."""
        step = position or 0
        share = rank_slice(self.batch_tokens, rank, world)
        while True:
            index = rows_for_step(self.n_tokens, step, self.batch_tokens, self.seed)[share]
            step += 1
            yield self.rows(index), step
