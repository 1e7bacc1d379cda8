"""Patching benchmark: a batched sweep (many patches per forward along the batch) against
the naive loop of one patched forward per patch, same sweep, same model, one process;
and attribution patching against the exact sweep.

The naive loop is what one writes by hand: record the clean run, then for every patch one
forward of the corrupted prompts with a replace edit at that site (position, head), and the
metric. Both give the same scores (checked before timing).

    OMP_NUM_THREADS=1 .venv/bin/python bench/patching.py
"""

from __future__ import annotations

import time

import torch

import mechscope as ms
from mechscope.heads import repeated_random_tokens
from mechscope import edits
from mechscope.patching import Task, agreement, answer_logit, attribution_sweep, logit_diff, sweep
from mechscope.patching.sweep import plan


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


def naive(model, task, metric, kind: str) -> torch.Tensor:
    """One patched forward per patch (denoising: clean values into the corrupted run)."""
    patches, _, shape, _ = plan(model, kind, task.clean.shape[1])
    mask = task.attention_mask()
    with torch.no_grad():
        clean = model.run(task.clean, record=sorted({p.site for p in patches}), attention_mask=mask).cache
        values = []
        for p in patches:
            def write(x, p=p):
                index = (slice(None), slice(None) if p.position is None else p.position) + (
                    () if p.head is None else (p.head,))
                x = x.clone()
                x[index] = clean[p.site][index].to(x.dtype)
                return x
            logits = model.run(task.corrupt, attention_mask=mask, edits=[edits.replace(p.site, write)]).logits
            values.append(float(metric(logits)))
    return torch.tensor(values).reshape(shape)


def main() -> None:
    torch.set_num_threads(1)
    for model, task, make_metric in _tasks():
        metric = make_metric(task)
        for kind in ["resid", "heads", "heads-pos"]:
            exact = sweep(model, task, metric, sweep=kind, batch_size=256)
            torch.testing.assert_close(exact.patched, naive(model, task, metric, kind), atol=1e-3, rtol=1e-4)
            batched = _best(lambda: sweep(model, task, metric, sweep=kind, batch_size=256))
            loop = _best(lambda: naive(model, task, metric, kind))
            approx_time = _best(lambda: attribution_sweep(model, task, metric, sweep=kind))
            fit = agreement(exact, attribution_sweep(model, task, metric, sweep=kind))
            print(f"{model.name:>14} {kind:>9} ({exact.scores.numel():4d} patches x {len(task)} prompts): "
                  f"batched {batched * 1e3:7.1f} ms, one per forward {loop * 1e3:7.1f} ms, ratio {loop / batched:5.1f}x | "
                  f"attribution {approx_time * 1e3:6.1f} ms ({batched / approx_time:5.1f}x faster than batched exact), "
                  f"r={fit.pearson:.3f}, sign={fit.sign:.2f}")


if __name__ == "__main__":
    main()
