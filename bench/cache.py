"""Training from an activation cache larger than a memory cap, against the disk's own
sequential read rate and against the same training with the whole cache in memory.

    OMP_NUM_THREADS=1 .venv/bin/python bench/cache.py [--contexts 1024] [--repeats 3]

1. Writes a cache (`write_cache`) of a random-weight GPT-2-shaped model's
   `blocks.0.hook_resid_post` (d_model `--d-in`, float32) under out/bench-cache: `--contexts`
   x 128 tokens in shards of 32 contexts (about 8 MB each at d_in 512).
2. Times, interleaved (the start of the cycle rotating each repeat), medians of `--repeats`:
   - "disk": a sequential read of every shard file (16 MB reads), after evicting the files
     from the page cache (fsync, then posix_fadvise DONTNEED): the disk's read rate;
   - "memory": `--steps` TopK training steps reading the whole cache held in memory
     (`ShardStream(in_memory=True)`; the load is outside the timed region);
   - "streamed": the same steps, same batches, from the evicted files with at most
     `--max-shards` shards in memory (`ShardStream`, read ahead by its thread);
   - "mmap shuffle": the same number of steps with the older whole-cache shuffle
     (`CacheReader`, memory-mapped, evicted first): every batch reads rows all over the disk.
   - "reader only": the streamed batches without training: what the reader itself sustains.
3. Prints tokens/s of each; the streamed rate as a fraction of the in-memory rate and of the
   disk's rate in tokens/s (bytes/s over bytes per token), and of the lower of the two (goal
   >= 0.8); the memory cap against the cache's size.
4. The FVU cost of half-precision storage: the same dictionary trained the same steps from
   float32, float16 and bfloat16 copies of the first shards, evaluated on float32 rows.

On a machine shared with other jobs every rate moves with the load (printed); eviction may
not reach a disk behind a virtualised or network file system, in which case "disk" is the
host's cache and the fractions say so by being near the memory rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import torch
from _machine import load_line, machine_line
from transformers import GPT2Config, GPT2LMHeadModel

import mechscope as ms
from mechscope.dictionary.cache import CacheReader, write_cache
from mechscope.dictionary.config import CoderConfig
from mechscope.dictionary.source import SourceConfig
from mechscope.dictionary.streaming import ShardStream
from mechscope.dictionary.train import Trainer
from mechscope.dictionary.trainer_config import TrainConfig

SITE = "blocks.0.hook_resid_post"
OUT = Path(__file__).resolve().parents[1] / "out" / "bench-cache"


def _model(d_in: int) -> ms.Model:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=d_in, n_head=8, n_positions=128, vocab_size=512)
    return ms.Model(GPT2LMHeadModel(config), None, name=f"random-gpt2-{d_in}")


def _shards(folder: Path) -> list[Path]:
    return sorted((folder / SITE).glob("shard-*.npy"))


def evict(folder: Path) -> None:
    """Drop the cache's files from the page cache (clean pages only: sync first)."""
    os.sync()
    for path in _shards(folder):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_all(folder: Path) -> int:
    total = 0
    for path in _shards(folder):
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(16 << 20):
                total += len(chunk)
    return total


def _trainer(stream, d_in: int, steps: int, batch: int) -> Trainer:
    cfg = TrainConfig(total_tokens=batch * (steps + 8), batch_tokens=batch, lr=4e-4, warmup_steps=0, norm_batches=1)
    trainer = Trainer(stream, [CoderConfig("topk", d_in, 8 * d_in, k=32, hook_name=SITE)], cfg, device="cpu")
    trainer.setup()
    return trainer


def train_steps(stream, d_in: int, steps: int, batch: int, cold: Path | None) -> float:
    """Seconds for `steps` training steps from `stream` (files evicted first when `cold`)."""
    trainer = _trainer(stream, d_in, steps, batch)
    if cold is not None:
        evict(cold)
    batches = stream.batches(0)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(next(batches)[0])
    seconds = time.perf_counter() - start
    batches.close()
    return seconds


def reader_only(stream, steps: int, folder: Path) -> float:
    evict(folder)
    batches = stream.batches(0)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    seconds = time.perf_counter() - start
    batches.close()
    return seconds


def medians(variants: dict, repeats: int) -> dict[str, float]:
    names, times = list(variants), {n: [] for n in variants}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(variants[name]())
    return {n: statistics.median(t) for n, t in times.items()}


def fvu_of_storage(model, ids: torch.Tensor, d_in: int, steps: int, batch: int) -> dict[str, float]:
    """Held-out FVU (on float32 rows) of one dictionary trained from each storage dtype."""
    out = {}
    held = None
    for dtype in ("float32", "float16", "bfloat16"):
        folder = OUT / f"small-{dtype}"
        if not (folder / "cfg.json").is_file():
            write_cache(model, SITE, ids, folder, shard_contexts=32, dtype=dtype, cfg=SourceConfig(model_batch=32))
        if held is None:
            reader = CacheReader(folder)
            held = reader.rows(torch.arange(reader.n_tokens - 4096, reader.n_tokens))
        stream = ShardStream(folder, batch_tokens=batch, seed=0, in_memory=True)
        trainer = _trainer(stream, d_in, steps, batch)
        batches = stream.batches(0)
        for _ in range(steps):
            trainer.step(next(batches)[0])
        out[dtype] = trainer.evaluate(held)[0]["fvu"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=1024, help="contexts of 128 tokens in the cache")
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--steps", type=int, default=12, help="training steps per timing")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--max-shards", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="rewrite the cache")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_line())
    model = _model(args.d_in)
    ids = torch.randint(0, 512, (args.contexts, 128), generator=torch.Generator().manual_seed(0))
    folder = OUT / "acts"
    if args.fresh and OUT.exists():
        shutil.rmtree(OUT)
    if not (folder / "cfg.json").is_file():
        write_cache(model, SITE, ids, folder, shard_contexts=32, cfg=SourceConfig(model_batch=32))
    size = sum(p.stat().st_size for p in _shards(folder))
    shard = max(p.stat().st_size for p in _shards(folder))
    per_token = 4 * args.d_in
    memory = ShardStream(folder, batch_tokens=args.batch, seed=0, in_memory=True)
    next(memory.batches(0))  # the whole cache loaded once, outside the timings
    streamed = ShardStream(folder, batch_tokens=args.batch, seed=0, max_shards=args.max_shards)
    mapped = CacheReader(folder, batch_tokens=args.batch, seed=0)
    disk_bytes = {"n": 0}

    def disk() -> float:
        evict(folder)
        start = time.perf_counter()
        disk_bytes["n"] = read_all(folder)
        return time.perf_counter() - start

    t = medians(
        {
            "disk": disk,
            "memory": lambda: train_steps(memory, args.d_in, args.steps, args.batch, None),
            "streamed": lambda: train_steps(streamed, args.d_in, args.steps, args.batch, folder),
            "mmap shuffle": lambda: train_steps(mapped, args.d_in, args.steps, args.batch, folder),
            "reader only": lambda: reader_only(streamed, args.steps, folder),
        },
        args.repeats,
    )
    tokens = args.steps * args.batch
    rate = {k: tokens / v for k, v in t.items() if k != "disk"}
    disk_rate = disk_bytes["n"] / t["disk"] / per_token
    print(
        f"cache {size / 2**20:.0f} MB in {len(_shards(folder))} shards; memory cap {args.max_shards} shards "
        f"= {args.max_shards * shard / 2**20:.0f} MB ({args.max_shards * shard / size:.1%} of the cache); "
        f"peak held {streamed.peak_held} shards"
    )
    print(f"disk sequential read: {disk_bytes['n'] / t['disk'] / 1e6:.0f} MB/s = {disk_rate:,.0f} tokens/s")
    for name, value in rate.items():
        print(f"{name:>13}: {value:9,.0f} tokens/s ({value * per_token / 1e6:6.1f} MB/s)")
    lower = min(rate["memory"], disk_rate)
    print(
        f"streamed / memory {rate['streamed'] / rate['memory']:.2f}, "
        f"streamed / disk {rate['streamed'] / disk_rate:.2f}, "
        f"streamed / lower of the two {rate['streamed'] / lower:.2f} (goal >= 0.8); "
        f"mmap shuffle / memory {rate['mmap shuffle'] / rate['memory']:.2f}"
    )
    fvu = fvu_of_storage(model, ids[:256], args.d_in, 2 * args.steps, args.batch)
    print("held-out FVU after the same steps by storage dtype: " + ", ".join(f"{k} {v:.5f}" for k, v in fvu.items()))
    print(load_line())


if __name__ == "__main__":
    main()
