"""Patching benchmark: a batched sweep (many patches per forward along the batch) against
the naive loop of one patched forward per patch, same sweep, same model, one process;
and attribution patching against the exact sweep.

The naive loop is what one writes by hand: record the clean run, then for every patch one
forward of the corrupted prompts with a replace edit at that site (position, head), and the
metric. Variants of the batched sweep: as shipped (copies share the blocks before their
patched layer, and the unembedding runs at the metric's position only), "layers only"
(the metric declares no positions, so full logits), and "plain" (`share=False`: every
copy runs the whole model), and "no prefix" (`prefix=False`: the positions before the first
token where clean and corrupted prompts differ are recomputed in every copy instead of run
once into a KV cache). All give the naive loop's scores (checked before timing).
The variants are interleaved, the start of the cycle rotating each repeat, and medians
reported, so that they see the same drift from whatever else runs on the machine.

    OMP_NUM_THREADS=1 .venv/bin/python bench/patching.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _machine import load_line, machine_line

import mechscope as ms
from mechscope import edits
from mechscope.heads import repeated_random_tokens
from mechscope.patching import Task, agreement, answer_logit, attribution_sweep, logit_diff, sweep
from mechscope.patching.metrics import Metric
from mechscope.patching.sweep import plan


def _medians(variants: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each variant, interleaved; the first one run leads off in turn."""
    names, times = list(variants), {n: [] for n in variants}
    for fn in variants.values():
        fn()  # warm-up
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}


def _tasks(models):
    if "induction" in models:
        induction = ms.load("zoo:induction")
        tokens = repeated_random_tokens(64, 12, 8, seed=1, prefix_token=0)
        other = repeated_random_tokens(64, 12, 8, seed=2, prefix_token=0)
        corrupt = tokens[:, :-1].clone()
        corrupt[:, 1:13] = other[:, 1:13]
        yield induction, Task(tokens[:, :-1], corrupt, tokens[:, -1], other[:, 12]), answer_logit
    if "pycode" not in models:
        return
    pycode = ms.load("zoo:pycode")
    # the second argument's name comes back after the operator (clean - corrupt logit difference
    # 3.6 on average; the earlier " +" vs " -" task had 0.058 on the retrained model)
    clean = ["def add(a, b):\n    return a +", "def mul(x, y):\n    return x *", "def sub(p, q):\n    return p -"]
    corrupt = ["def add(a, c):\n    return a +", "def mul(x, z):\n    return x *", "def sub(p, r):\n    return p -"]
    yield pycode, Task.from_prompts(pycode, clean, corrupt, [" b", " y", " q"], [" c", " z", " r"]), logit_diff


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
                    () if p.head is None else (p.head,)
                )
                x = x.clone()
                x[index] = clean[p.site][index].to(x.dtype)
                return x

            logits = model.run(task.corrupt, attention_mask=mask, edits=[edits.replace(p.site, write)]).logits
            values.append(float(metric(logits)))
    return torch.tensor(values).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--models", default="induction,pycode", help="comma-separated zoo models: induction, pycode")
    parser.add_argument("--kinds", default="resid,heads,heads-pos", help="comma-separated sweeps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine_line())
    for model, task, make_metric in _tasks(args.models.split(",")):
        metric = make_metric(task)
        full_logits = Metric(metric.fn, metric.name)  # the same metric, declaring no positions
        for kind in args.kinds.split(","):
            exact = sweep(model, task, metric, sweep=kind, batch_size=256)
            reference = naive(model, task, metric, kind)
            for m, share in [(metric, True), (full_logits, True), (metric, False)]:
                other = sweep(model, task, m, sweep=kind, batch_size=256, share=share)
                torch.testing.assert_close(other.patched, reference, atol=1e-4, rtol=1e-4)
            whole = sweep(model, task, metric, sweep=kind, batch_size=256, prefix=False)
            torch.testing.assert_close(whole.patched, exact.patched, atol=1e-5, rtol=0)
            torch.testing.assert_close(exact.patched, reference, atol=1e-4, rtol=1e-4)
            t = _medians(
                {
                    "batched": lambda: sweep(model, task, metric, sweep=kind, batch_size=256),
                    "layers only": lambda: sweep(model, task, full_logits, sweep=kind, batch_size=256),
                    "plain": lambda: sweep(model, task, metric, sweep=kind, batch_size=256, share=False),
                    "no prefix": lambda: sweep(model, task, metric, sweep=kind, batch_size=256, prefix=False),
                    "naive": lambda: naive(model, task, metric, kind),
                    "attribution": lambda: attribution_sweep(model, task, metric, sweep=kind),
                },
                args.repeats,
            )
            fit = agreement(exact, attribution_sweep(model, task, metric, sweep=kind))
            print(
                f"{model.name:>14} {kind:>9} ({exact.scores.numel():4d} patches x {len(task)} prompts): "
                f"naive {t['naive'] * 1e3:7.1f} ms, batched {t['batched'] * 1e3:6.1f} ms "
                f"(ratio {t['naive'] / t['batched']:4.1f}x; layers only {t['naive'] / t['layers only']:4.1f}x, "
                f"plain {t['naive'] / t['plain']:4.1f}x; prefix sharing {t['no prefix'] / t['batched']:4.2f}x "
                f"over no prefix) | attribution {t['attribution'] * 1e3:6.1f} ms "
                f"({t['batched'] / t['attribution']:4.1f}x faster than batched), r={fit.pearson:.3f}, "
                f"sign={fit.sign:.2f}"
            )
    print(load_line())


if __name__ == "__main__":
    main()
