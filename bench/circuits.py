"""Circuit-discovery benchmark: ACDC (one exact patched forward per edge tried) against
EAP (two forwards + one backward for every edge) and EAP-IG, same graph, same task, one
process; with faithfulness of each circuit and how well EAP ranks ACDC's edges (ROC-AUC).
Also the patching helper's batched head sweep against one patched forward per head.

    OMP_NUM_THREADS=1 .venv/bin/python bench/circuits.py [--models zoo:induction zoo:pycode random:gpt2-6x8]

`random:gpt2-LxH` is a randomly initialised GPT-2 (L layers, H heads, d_model 16·H) written
to a temporary folder: its circuit is meaningless, but its graph is large, and ACDC's cost
grows with the number of edges while EAP's stays at two forwards and one backward.

Every variant is timed the same way: `--repeats` runs each (3 by default) after one
warm-up call of each, the variants interleaved (ACDC, EAP and EAP-IG in one cycle, the
start rotating every repeat, so that drift on a shared machine hits all of them), and the
**median** of the runs is reported, with the min and max beside it. (Until 2026-12-07
EAP was timed best of 3 and ACDC once, which favoured the ratio.)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _machine import load_line, machine_line

import mechscope as ms
from mechscope.circuits import acdc, eap, eap_ig, induction_task
from mechscope.patching import logit_diff, sweep


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _interleaved(fns: dict, repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of `repeats` runs of each function (after one warm-up call of each), the
    cycle's start rotating every repeat (so all see the same drift)."""
    for fn in fns.values() if warmup else ():
        fn()
    names, times = list(fns), {k: [] for k in fns}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(_timed(fns[name])[1])
    return times


def _stat(times: list[float], scale: float = 1.0, unit: str = "s") -> str:
    med, lo, hi = statistics.median(times), min(times), max(times)
    return f"{med * scale:8.2f} {unit} (median of {len(times)}; min {lo * scale:.2f}, max {hi * scale:.2f})"


def _auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean())


def _load(name: str):
    if not name.startswith("random:gpt2-"):
        return ms.load(name)
    import tempfile

    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    layers, heads = (int(v) for v in name.removeprefix("random:gpt2-").split("x"))
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_head=heads, n_embd=16 * heads, n_positions=64, vocab_size=512))
    folder = tempfile.mkdtemp(prefix="bench-circuits-")
    hf.save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(512)}
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), bos_token="t0"
    ).save_pretrained(folder)
    return ms.load(folder)


def bench(name: str, threshold: float, repeats: int) -> None:
    model = _load(name)
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else 0
    task = induction_task(model, span=12, prefix=8, batch=16, seed=3, bos=bos)
    metric = logit_diff(task)
    found = acdc(model, task, threshold=threshold, progress=False)  # the warm-ups (ACDC's result kept)
    eap(model, task, metric)
    eap_ig(model, task, metric, steps=5)
    times = _interleaved(
        {
            "acdc": lambda: acdc(model, task, threshold=threshold, progress=False),
            "eap": lambda: eap(model, task, metric),
            "eap_ig": lambda: eap_ig(model, task, metric, steps=5),
        },
        repeats,
        warmup=False,
    )
    t_acdc, t_eap, t_ig = (statistics.median(times[k]) for k in ("acdc", "eap", "eap_ig"))
    scores = eap(model, task, metric)
    positive = torch.tensor([e in set(found.edges) for e in scores.edges])
    n_edges = len(scores.graph.edges)
    print(f"{name:>14}: {n_edges} edges, {len(task)} prompts x {task.clean.shape[1]} tokens")
    print(
        f"{'':>16}ACDC (threshold {threshold}, KL) {_stat(times['acdc'])}, kept {len(found):3d} edges, "
        f"faithfulness {found.faithfulness(model, task, metric):.3f}"
    )
    print(f"{'':>16}EAP                      {_stat(times['eap'], 1e3, 'ms')}  -> ACDC / EAP = {t_acdc / t_eap:7.1f}x")
    print(
        f"{'':>16}EAP-IG (5 steps)         {_stat(times['eap_ig'], 1e3, 'ms')}  -> ACDC / EAP-IG = "
        f"{t_acdc / t_ig:7.1f}x"
    )
    print(
        f"{'':>16}(ratios of medians; of the minima: ACDC / EAP {min(times['acdc']) / min(times['eap']):.1f}x, "
        f"ACDC / EAP-IG {min(times['acdc']) / min(times['eap_ig']):.1f}x); {load_line()}"
    )
    top = scores.circuit(top=max(1, len(found)))
    print(
        f"{'':>16}EAP top-{len(found)} faithfulness {top.faithfulness(model, task, metric):.3f}; EAP |score| ranks "
        f"ACDC's edges with ROC-AUC {_auc(scores.scores.abs(), positive):.3f}"
    )
    for kind in ("heads", "resid"):
        t = _interleaved(
            {
                "batched": lambda kind=kind: sweep(model, task, metric, sweep=kind, batch_size=256),
                "naive": lambda kind=kind: sweep(model, task, metric, sweep=kind, batch_size=len(task)),
            },
            repeats,
        )
        batched, naive = statistics.median(t["batched"]), statistics.median(t["naive"])
        print(
            f"{'':>16}patching {kind} sweep (median of {repeats}): batched {batched * 1e3:.1f} ms, one per forward "
            f"{naive * 1e3:.1f} ms, ratio {naive / batched:.1f}x"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["zoo:induction", "zoo:pycode"])
    parser.add_argument(
        "--threshold",
        type=float,
        nargs="+",
        default=[0.02, 0.002],
        help="ACDC threshold per model (the last one repeats)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of every variant (the median is reported)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    for i, name in enumerate(args.models):
        bench(name, args.threshold[min(i, len(args.threshold) - 1)], args.repeats)
    print(load_line())


if __name__ == "__main__":
    main()
