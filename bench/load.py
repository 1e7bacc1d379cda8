"""Benchmark: loading a model with mechscope vs Hugging Face's own `from_pretrained`.

    .venv/bin/python bench/load.py                          # pycode, gpt2, qwen3, mixtral shapes
    .venv/bin/python bench/load.py --models qwen3 --repeats 9

Both sides load the same folder from disk (the page cache warmed by one untimed load each):
  hf   AutoModelForCausalLM.from_pretrained(folder) + AutoTokenizer.from_pretrained(folder)
  ms   mechscope.load(folder): the same two calls, then the family's site table (or the
       automatic adapter's verification) and the model's checks
timed interleaved, medians over repeats. Goal: ms / hf <= 1.1.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _machine import load_line, machine_info, machine_line
from hooks import prepare

import mechscope as ms


def hf_load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder)


def timed(fn, folder: Path) -> float:
    gc.collect()
    start = time.perf_counter()
    loaded = fn(folder)
    seconds = time.perf_counter() - start
    del loaded
    return seconds


def bench_model(name: str, repeats: int, tmp: Path) -> dict | None:
    prepared = prepare(name, tmp)
    if prepared is None:
        return None
    folder, description = prepared
    sides = {"hf": hf_load, "ms": lambda f: ms.load(str(f))}
    for fn in sides.values():  # warm the page cache and the imports
        timed(fn, folder)
    times: dict[str, list[float]] = {side: [] for side in sides}
    for i in range(repeats):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))  # interleaved, alternating first
        for side in order:
            times[side].append(timed(sides[side], folder))
    med = {side: statistics.median(values) for side, values in times.items()}
    row = {"model": name, "description": description, **{f"{s}_s": round(v, 4) for s, v in med.items()}}
    row["ms/hf"] = round(med["ms"] / med["hf"], 3)
    print(f"[{name}] {description}")
    print(f"  hf {med['hf'] * 1e3:8.1f} ms   ms {med['ms'] * 1e3:8.1f} ms   ms/hf {row['ms/hf']:.3f}   ({load_line()})")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="pycode,gpt2,qwen3,mixtral", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="FILE", help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        rows = [bench_model(name, args.repeats, Path(tmp)) for name in args.models.split(",")]
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "rows": [r for r in rows if r]}, indent=1))


if __name__ == "__main__":
    main()
