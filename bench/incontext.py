"""In-context methods, timed side by side in one process (under whatever load the machine has):

- indirect effects of every head on zoo:icl: batched (`incontext.indirect_effects`, all heads
  riding the batch through patching's machinery) vs one head per forward; goal >= 5x.
- Jacobians d(object)/d(subject) for a batch of samples: batched (`incontext.jacobians`, one
  forward and one vmapped backward) vs a per-sample `torch.autograd.functional.jacobian`
  loop; goal >= 3x.

    .venv/bin/python bench/incontext.py [--prompts 32] [--samples 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _machine import machine_info, machine_line

import mechscope as ms
from mechscope.incontext import builtin_tasks, icl_prompts, indirect_effects, mean_head_outputs
from mechscope.incontext.heads import indirect_effects_one_by_one
from mechscope.incontext.jacobians import encode_samples, jacobians, jacobians_one_by_one


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_effects(model, n_prompts: int, repeats: int) -> None:
    task = builtin_tasks()["icl/successor"]
    clean = icl_prompts(model, task, shots=5, n=n_prompts, seed=0)
    shuffled = icl_prompts(model, task, shots=5, n=n_prompts, seed=0, shuffle_labels=True)
    means = mean_head_outputs(model, clean)
    t_batched, (batched, _) = best_of(lambda: indirect_effects(model, shuffled, means, batch_size=1024), repeats)
    t_single, single = best_of(lambda: indirect_effects_one_by_one(model, shuffled, means), repeats)
    gap = float((batched - single).abs().max())
    heads = means.shape[0] * means.shape[1]
    print(f"indirect effects, {heads} heads x {n_prompts} prompts: batched {t_batched * 1e3:.1f} ms, "
          f"one head per forward {t_single * 1e3:.1f} ms: {t_single / t_batched:.2f}x (goal >= 5x); "
          f"max |difference| {gap:.2e}")  # fmt: skip


def bench_jacobians(model, n_samples: int, repeats: int) -> None:
    prompts = [f"n{i} -> n{(i + 1) % 16} ; n{(i + 5) % 16} ->" for i in range(n_samples)]
    subjects = [f"n{(i + 5) % 16}" for i in range(n_samples)]
    data = encode_samples(model, prompts, subjects)
    sites = ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post")
    t_batched, (J, _, _) = best_of(lambda: jacobians(model, data, *sites), repeats)
    t_loop, loop = best_of(lambda: jacobians_one_by_one(model, data, *sites), repeats)
    gap = float((J - loop).abs().max())
    print(f"Jacobians, {n_samples} samples, d_model {model.dims.d_model}: batched {t_batched * 1e3:.1f} ms, "
          f"per-sample autograd.functional.jacobian {t_loop * 1e3:.1f} ms: {t_loop / t_batched:.2f}x (goal >= 3x); "
          f"max |difference| {gap:.2e}")  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="incontext: batched vs one-at-a-time indirect effects and Jacobians")
    p.add_argument("--prompts", type=int, default=32, help="shuffled-label prompts for the indirect effects")
    p.add_argument("--samples", type=int, default=16, help="relation samples for the Jacobians")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = p.parse_args(argv)
    print(machine_line(machine_info()))
    model = ms.load("zoo:icl")
    with torch.no_grad():
        model.run("n1 -> n2 ; n3 ->")  # warm-up
    bench_effects(model, args.prompts, args.repeats)
    bench_jacobians(model, args.samples, args.repeats)
    print(f"load at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (figures under that load)")


if __name__ == "__main__":
    main()
