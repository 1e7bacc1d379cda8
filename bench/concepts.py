"""Concepts benchmark (issue 20), measured side by side in one process:

1. probe training throughput (training rows / s) of mechscope's minibatch torch probe vs
   scikit-learn's LogisticRegression (lbfgs) on the same standardised zoo:pycode token-kind
   activations, the same L2 and the same held-out rows: mechscope's fastest schedule that
   reaches sklearn's held-out accuracy (within 0.005) is the one compared (goal >= 3x);
2. LEACE fit time: `concepts.fit_on` (streamed batches) vs `concept_erasure.LeaceFitter.fit`
   called directly on the same float64 rows (goal <= 1.1x);
3. confidence scoring overhead: `concepts.score` vs a plain `model.run` forward (goal <= 1.05x).

    .venv/bin/python bench/concepts.py [--texts 40] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_line  # noqa: E402

import mechscope as ms  # noqa: E402
from mechscope.concepts import ConfidenceProbe, Probe, collect, fit_on, python_token_kinds, score  # noqa: E402
from mechscope.concepts.heads import ProbeConfig, accuracy, standardiser, train_heads  # noqa: E402
from mechscope.concepts.probe import split_texts  # noqa: E402

SITE = "blocks.2.hook_resid_post"


def stdlib_texts(n: int, chars: int = 1500) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for f in sorted(root.glob("*.py")):
        text = f.read_text(encoding="utf-8")
        at = text.find("\ndef ", len(text) // 2)
        if at > 0 and len(text) - at > chars:
            out.append(text[at + 1 : at + 1 + chars])
    return out[:n]


def timed(fn, repeats: int = 1):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def bench_probe(data, l2: float, repeats: int) -> None:
    from sklearn.linear_model import LogisticRegression

    train, test = split_texts(data.texts, 0.2, 0)
    norm = standardiser(data, SITE, train, 4096)
    x = (data.x(SITE) - norm[0]) / norm[1]
    y = data.labels
    c = 1.0 / (l2 * len(train))  # sklearn: C * sum(loss) + |w|^2 / 2  ==  mean(loss) + l2 / 2 |w|^2
    sk_time, sk = timed(lambda: LogisticRegression(C=c, max_iter=1000).fit(x[train].numpy(), y[train].numpy()), repeats)
    sk_acc = float((torch.from_numpy(sk.predict(x[test].numpy())) == y[test]).float().mean())
    print(
        f"probe (medians of {repeats}): {len(train)} training rows, {len(test)} held-out, "
        f"{data.width(SITE)} dims, {len(data.classes)} classes"
    )
    print(
        f"  sklearn LogisticRegression (lbfgs): {sk_time:.2f} s, {len(train) / sk_time:,.0f} rows/s, "
        f"held-out {sk_acc:.4f}"
    )
    one, all_test = torch.ones(1, len(train), dtype=torch.bool), torch.ones(1, len(test), dtype=torch.bool)
    reached = None
    for steps in (50, 100, 200, 400, 800):
        cfg = ProbeConfig(epochs=1, min_steps=steps, batch_size=1024)
        t, params = timed(lambda: train_heads(data, SITE, train, one, torch.tensor([l2]), cfg, norm), repeats)
        acc = float(accuracy(data, SITE, test, all_test, params, "logistic", norm)[0])
        print(f"  mechscope probe, {steps:>4} steps: {t:.2f} s, {len(train) / t:,.0f} rows/s, held-out {acc:.4f}")
        if acc >= sk_acc - 0.005 and reached is None:
            reached = t
    if reached is None:
        print("  mechscope did not reach sklearn's held-out accuracy within 800 steps")
    else:
        print(f"  => throughput ratio at equal held-out accuracy: {sk_time / reached:.2f}x sklearn (goal >= 3x)")


def bench_leace(data, repeats: int) -> None:
    from concept_erasure import LeaceFitter

    x = data.x(SITE).double()
    z = F.one_hot(data.labels, len(data.classes)).double()
    direct, _ = timed(lambda: LeaceFitter.fit(x, z).eraser, repeats)
    rows = type(data)(data.model, data.sites, data.classes, data.labels, data.groups, data.texts, {SITE: x}, data.rows)
    ours, _ = timed(lambda: fit_on(rows, SITE, batch=4096), repeats)
    print(f"LEACE fit on {len(x)} x {x.shape[1]} float64 rows, {len(data.classes)} classes (median of {repeats}):")
    print(f"  concept_erasure.LeaceFitter.fit: {direct * 1e3:.1f} ms; mechscope fit_on: {ours * 1e3:.1f} ms")
    print(f"  => {ours / direct:.3f}x the package (goal <= 1.1x)")


def bench_score(model, repeats: int) -> None:
    d = model.dims.d_model
    gen = torch.Generator().manual_seed(0)
    weights = {"weight": torch.randn(d, 1, generator=gen), "bias": torch.zeros(1)}
    p = Probe("logistic", SITE, model.name, ("wrong", "right"), torch.zeros(d), torch.ones(d), weights)
    conf = ConfidenceProbe(p, "temperature", {"temperature": torch.tensor([1.5])})
    prompts = stdlib_texts(16, chars=300)  # each within the 128 positions
    model.run(prompts)  # warm-up
    rounds = []
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        plain, _ = timed(lambda: model.run(prompts))
        scored, _ = timed(lambda: score(model, conf, prompts))
        rounds.append((plain, scored))
    plain = statistics.median(r[0] for r in rounds)
    scored = statistics.median(r[1] for r in rounds)
    print(f"confidence scoring of {len(prompts)} prompts (median of {repeats}, interleaved):")
    print(f"  model.run: {plain * 1e3:.1f} ms; concepts.score: {scored * 1e3:.1f} ms")
    print(f"  => {scored / plain:.3f}x a forward (goal <= 1.05x)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=40, help="stdlib pieces to collect token kinds from")
    p.add_argument("--repeats", type=int, default=5, help="timings are medians of this many runs")
    p.add_argument("--l2", type=float, default=1e-3)
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(machine_line())
    print("note: a shared machine; figures are under the load shown (start and end)")
    model = ms.load("zoo:pycode")
    data = collect(model, stdlib_texts(args.texts), python_token_kinds, SITE)
    bench_probe(data, args.l2, args.repeats)
    bench_leace(data, args.repeats)
    bench_score(model, args.repeats)
    print(f"load at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
