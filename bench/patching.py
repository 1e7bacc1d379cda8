"""Patching benchmark: a batched sweep (many patches per forward along the batch) against
the naive loop of one patched forward per patch, same sweep, same model, one process;
and attribution patching against the exact sweep.

    OMP_NUM_THREADS=1 .venv/bin/python bench/patching.py
"""

from __future__ import annotations

import time

import torch

import mechscope as ms
from mechscope.heads import repeated_random_tokens
from mechscope.patching import Task, agreement, answer_logit, attribution_sweep, logit_diff, sweep


def _best(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _tasks():
    induction = ms.load("zoo:induction")
    tokens = repeated_random_tokens(64, 12, 8, seed=1, prefix_token=0)
    other = repeated_random_tokens(64, 12, 8, seed=2, prefix_token=0)
    corrupt = tokens[:, :-1].clone()
    corrupt[:, 1:13] = other[:, 1:13]
    yield induction, Task(tokens[:, :-1], corrupt, tokens[:, -1], other[:, 12]), answer_logit
    pycode = ms.load("zoo:pycode")
    clean = ["def add(a, b):\n    return a", "def sub(x, y):\n    return x"]
    corrupt = ["def add(c, d):\n    return c", "def sub(p, q):\n    return p"]
    yield pycode, Task.from_prompts(pycode, clean, corrupt, [" +", " -"], [" -", " +"]), logit_diff


def main() -> None:
    torch.set_num_threads(1)
    for model, task, make_metric in _tasks():
        metric = make_metric(task)
        for kind in ["resid", "heads", "heads-pos"]:
            batched = _best(lambda: sweep(model, task, metric, sweep=kind, batch_size=256))
            naive = _best(lambda: sweep(model, task, metric, sweep=kind, batch_size=len(task)))
            exact = sweep(model, task, metric, sweep=kind, batch_size=256)
            approx_time = _best(lambda: attribution_sweep(model, task, metric, sweep=kind))
            fit = agreement(exact, attribution_sweep(model, task, metric, sweep=kind))
            print(f"{model.name:>14} {kind:>9} ({exact.scores.numel():4d} patches x {len(task)} prompts): "
                  f"batched {batched * 1e3:7.1f} ms, one per forward {naive * 1e3:7.1f} ms, ratio {naive / batched:5.1f}x | "
                  f"attribution {approx_time * 1e3:6.1f} ms ({batched / approx_time:5.1f}x faster than batched exact), "
                  f"r={fit.pearson:.3f}, sign={fit.sign:.2f}")


if __name__ == "__main__":
    main()
