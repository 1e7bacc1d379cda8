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

`--adam dense,lazy` times both optimisers per width, the two variants alternating step by
step (same inputs): lazy Adam (`TrainConfig(adam="lazy")`, lazy_adam.py) runs the projection,
Adam and the renormalisation only on the latents the step touched (fired or dead); the
touched share of the width is printed with it.
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
from mechscope.dictionary.lazy_adam import LazyAdam, touched_latents

PARTS = ("forward", "backward", "before_step", "adam", "zero_grad", "after_step", "dead count")


class Variant:
    """One dictionary and its optimiser (dense fused Adam or lazy Adam), stepped part by part."""

    def __init__(self, adam: str, width: int, d_in: int, k: int, batch: int, reuse: bool):
        torch.manual_seed(0)
        self.adam, self.batch, self.reuse = adam, batch, reuse
        self.coder = build(CoderConfig("topk", d_in, width, k=k, aux_k=2 * k))
        self.opt = (
            LazyAdam(self.coder.named_parameters(), lr=1e-4)
            if adam == "lazy"
            else torch.optim.Adam(self.coder.parameters(), lr=1e-4, fused=True)
        )
        self.dead = torch.zeros(width, dtype=torch.long)
        self.times: dict[str, list[float]] = {p: [] for p in PARTS}
        self.touched: list[float] = []

    def step(self, x: torch.Tensor, keep: bool) -> None:
        coder, width = self.coder, self.dead.shape[0]
        dead_mask = self.dead >= 10 * self.batch
        marks = [time.perf_counter()]
        with coder.sparse_acts():
            result = coder(x, dead_mask=dead_mask)
        marks.append(time.perf_counter())
        result.loss.backward()
        marks.append(time.perf_counter())
        acts = result.acts.detach()
        fired = torch.zeros(width, dtype=torch.int32).scatter_reduce_(
            0, acts._indices()[1], (acts._values() != 0).to(torch.int32), "amax"
        )
        rows = touched_latents(fired, dead_mask) if self.adam == "lazy" else None
        coder.before_step(rows)
        marks.append(time.perf_counter())
        self.opt.step() if rows is None else self.opt.step(rows)
        marks.append(time.perf_counter())
        if self.reuse:  # as Trainer.step: the next sparse backward overwrites these in place
            coder.recycle_grads()
        self.opt.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        coder.after_step(rows)
        marks.append(time.perf_counter())
        self.dead = torch.where(fired.bool(), 0, self.dead + self.batch)
        marks.append(time.perf_counter())
        if keep:
            for part, a, b in zip(PARTS, marks, marks[1:]):
                self.times[part].append(b - a)
            self.touched.append(1.0 if rows is None else len(rows) / width)

    def medians(self) -> dict[str, float]:
        return {p: statistics.median(t) for p, t in self.times.items()}


def profile(width: int, d_in: int, k: int, batch: int, steps: int, adams: list[str], reuse: bool) -> dict[str, Variant]:
    variants = {a: Variant(a, width, d_in, k, batch, reuse) for a in adams}
    for step in range(steps + 1):
        x = torch.randn(batch, d_in)
        for v in variants.values():  # alternating: both see the same drift of the machine's load
            v.step(x, keep=step > 0)  # the first is a warm-up
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="4096,16384,65536")
    parser.add_argument(
        "--no-reuse", action="store_true", help="fresh W_enc/W_dec gradients every step (before grad_spares.give_back)"
    )
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--adam", default="dense", help="comma list of dense, lazy")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_line())
    print(f"d_in {args.d_in}, k {args.k}, batch {args.batch}, float32, 1 thread; ms per part (share of the step)")
    parser_adams = [a for a in args.adam.split(",") if a]
    for width in sorted(int(w) for w in args.widths.split(",")):
        variants = profile(width, args.d_in, args.k, args.batch, args.steps, parser_adams, not args.no_reuse)
        per_latent = 4 * (2 * args.d_in + 1) * 4 + 8  # params, grads, Adam m and v; the dead counter
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # kB on Linux
        steps = {}
        for adam, v in variants.items():
            t = v.medians()
            steps[adam] = total = sum(t.values())
            parts = ", ".join(f"{p} {x * 1e3:.1f} ({x / total:.0%})" for p, x in t.items())
            touched = f", touched {statistics.median(v.touched):.0%} of the latents" if adam == "lazy" else ""
            print(f"width {width:>6} {adam:>5}: step {total * 1e3:7.1f} ms | {parts}{touched}")
        ratio = f"; lazy / dense step {steps['lazy'] / steps['dense']:.3f}" if len(steps) == 2 else ""
        print(
            f"width {width:>6}: state {per_latent} B/latent = {per_latent * width / 2**20:.0f} MB, "
            f"peak RSS {rss:.0f} MB{ratio}"
        )
    print(load_line())


if __name__ == "__main__":
    main()
