"""Where a TopK training step's time goes as the dictionary widens (issue 24, item 1).

    OMP_NUM_THREADS=1 .venv/bin/python bench/sae_profile.py [--widths 4096,16384,65536] [--d-in 256]

For each width (ascending), one `Trainer.step`'s parts on random inputs, timed separately
(median of `--steps` after a warm-up): forward (dense encoder GEMM, top-k selection, sparse
decode, AuxK), backward (the sparse backwards), `before_step` (decoder-gradient
projection), Adam (fused, over every parameter), `zero_grad`, `after_step` (decoder rows
renormalised) and the dead-latent count; the share of each; bytes of state per latent
(parameters, gradients, Adam's two moments: 4 copies of 2 d_in + 1 floats) and the process's
peak RSS after the width (it only grows, widths run ascending). Timings move with the
machine's load (printed).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
from _machine import load_line, machine_line

from mechscope.dictionary.base import build
from mechscope.dictionary.config import CoderConfig

PARTS = ("forward", "backward", "before_step", "adam", "zero_grad", "after_step", "dead count")


def profile(width: int, d_in: int, k: int, batch: int, steps: int) -> dict[str, float]:
    torch.manual_seed(0)
    coder = build(CoderConfig("topk", d_in, width, k=k, aux_k=2 * k))
    opt = torch.optim.Adam(coder.parameters(), lr=1e-4, fused=True)
    dead = torch.zeros(width, dtype=torch.long)
    times: dict[str, list[float]] = {p: [] for p in PARTS}
    for step in range(steps + 1):
        x = torch.randn(batch, d_in)
        marks = [time.perf_counter()]
        with coder.sparse_acts():
            result = coder(x, dead_mask=dead >= 10 * batch)
        marks.append(time.perf_counter())
        result.loss.backward()
        marks.append(time.perf_counter())
        coder.before_step()
        marks.append(time.perf_counter())
        opt.step()
        marks.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        coder.after_step()
        marks.append(time.perf_counter())
        acts = result.acts.detach()
        fired = torch.zeros(width, dtype=torch.int32).scatter_reduce_(
            0, acts._indices()[1], (acts._values() != 0).to(torch.int32), "amax"
        )
        dead = torch.where(fired.bool(), 0, dead + batch)
        marks.append(time.perf_counter())
        if step:  # the first is a warm-up
            for part, a, b in zip(PARTS, marks, marks[1:]):
                times[part].append(b - a)
    return {p: statistics.median(t) for p, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="4096,16384,65536")
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_line())
    print(f"d_in {args.d_in}, k {args.k}, batch {args.batch}, float32, 1 thread; ms per part (share of the step)")
    for width in sorted(int(w) for w in args.widths.split(",")):
        t = profile(width, args.d_in, args.k, args.batch, args.steps)
        total = sum(t.values())
        per_latent = 4 * (2 * args.d_in + 1) * 4 + 8  # params, grads, Adam m and v; the dead counter
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # kB on Linux
        parts = ", ".join(f"{p} {v * 1e3:.1f} ({v / total:.0%})" for p, v in t.items())
        print(
            f"width {width:>6}: step {total * 1e3:7.1f} ms | {parts} | state {per_latent} B/latent "
            f"= {per_latent * width / 2**20:.0f} MB, peak RSS {rss:.0f} MB"
        )
    print(load_line())


if __name__ == "__main__":
    main()
