"""Circuit-discovery benchmark: ACDC (one exact patched forward per edge tried) against
EAP (two forwards + one backward for every edge) and EAP-IG, same graph, same task, one
process; with faithfulness of each circuit and how well EAP ranks ACDC's edges (ROC-AUC).
Also the patching helper's batched head sweep against one patched forward per head.

    OMP_NUM_THREADS=1 .venv/bin/python bench/circuits.py [--models zoo:induction zoo:pycode random:gpt2-6x8]

`random:gpt2-LxH` is a randomly initialised GPT-2 (L layers, H heads, d_model 16·H) written
to a temporary folder: its circuit is meaningless, but its graph is large, and ACDC's cost
grows with the number of edges while EAP's stays at two forwards and one backward.
"""

from __future__ import annotations

import argparse
import time

import torch

import mechscope as ms
from mechscope.circuits import acdc, eap, eap_ig, induction_task
from mechscope.patching import logit_diff, sweep


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _best(fn, repeats: int = 3) -> float:
    return min(_timed(fn)[1] for _ in range(repeats))


def _auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(((pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()).mean())


def _load(name: str):
    if not name.startswith("random:gpt2-"):
        return ms.load(name)
    import tempfile

    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models
    layers, heads = (int(v) for v in name.removeprefix("random:gpt2-").split("x"))
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_head=heads, n_embd=16 * heads, n_positions=64, vocab_size=512))
    folder = tempfile.mkdtemp(prefix="bench-circuits-")
    hf.save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(512)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                            bos_token="t0").save_pretrained(folder)
    return ms.load(folder)


def bench(name: str, threshold: float) -> None:
    model = _load(name)
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else 0
    task = induction_task(model, span=12, prefix=8, batch=16, seed=3, bos=bos)
    metric = logit_diff(task)
    eap(model, task, metric)                                                       # warm-up
    t_eap = _best(lambda: eap(model, task, metric))
    t_ig = _best(lambda: eap_ig(model, task, metric, steps=5))
    found, t_acdc = _timed(lambda: acdc(model, task, threshold=threshold, progress=False))
    scores = eap(model, task, metric)
    positive = torch.tensor([e in set(found.edges) for e in scores.edges])
    n_edges = len(scores.graph.edges)
    print(f"{name:>14}: {n_edges} edges, {len(task)} prompts x {task.clean.shape[1]} tokens")
    print(f"{'':>16}ACDC (threshold {threshold}, KL) {t_acdc:8.2f} s, kept {len(found):3d} edges, faithfulness "
          f"{found.faithfulness(model, task, metric):.3f}")
    print(f"{'':>16}EAP                      {t_eap * 1e3:8.1f} ms  -> ACDC / EAP = {t_acdc / t_eap:7.1f}x")
    print(f"{'':>16}EAP-IG (5 steps)         {t_ig * 1e3:8.1f} ms  -> ACDC / EAP-IG = {t_acdc / t_ig:7.1f}x")
    top = scores.circuit(top=max(1, len(found)))
    print(f"{'':>16}EAP top-{len(found)} faithfulness {top.faithfulness(model, task, metric):.3f}; EAP |score| ranks "
          f"ACDC's edges with ROC-AUC {_auc(scores.scores.abs(), positive):.3f}")
    for kind in ("heads", "resid"):
        batched = _best(lambda: sweep(model, task, metric, sweep=kind, batch_size=256))
        naive = _best(lambda: sweep(model, task, metric, sweep=kind, batch_size=len(task)))
        print(f"{'':>16}patching {kind} sweep: batched {batched * 1e3:.1f} ms, one per forward {naive * 1e3:.1f} ms, "
              f"ratio {naive / batched:.1f}x")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["zoo:induction", "zoo:pycode"])
    parser.add_argument("--threshold", type=float, nargs="+", default=[0.02, 0.002],
                        help="ACDC threshold per model (the last one repeats)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for i, name in enumerate(args.models):
        bench(name, args.threshold[min(i, len(args.threshold) - 1)])


if __name__ == "__main__":
    main()
