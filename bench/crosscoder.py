"""Crosscoder training cost: a two-model crosscoder vs a single-site SAE of the same width.

    .venv/bin/python bench/crosscoder.py                    # zoo:pycode + a perturbed copy, blocks.2.hook_resid_post
    .venv/bin/python bench/crosscoder.py --width 4096 --batch 1024 --rounds 5 --threads 1 --json out/cc.json

Both dictionaries have the same number of latents (the "total width"); the crosscoder reads
the site of two models ([x_A | x_B], d_in = 2d), the SAE the site of one (d_in = d). Both are
ReLU dictionaries with the decoder-norm-weighted L1 (`relu` and `crosscoder`), so the ratio
is the price of the second block, not of another architecture. Measured side by side in
one process, rounds interleaved (order rotating), medians reported:

1. dictionary step only: `Trainer.step` (forward, backward, Adam, hooks) on pre-recorded
   activations, tokens/s;
2. end to end: the same steps with activations streamed from the model(s)
   (`diff_source`: two forward passes per batch, against one for the SAE), tokens/s;
3. memory per token of a training step: the input rows plus every tensor autograd saves for
   the backward pass (counted with `torch.autograd.graph.saved_tensors_hooks`), measured at
   B/2 and B tokens: the slope is the bytes per token, the intercept what a step holds
   whatever its batch (weight-sized tensors such as the decoder norms).

Measured (2026-11, 2-core CPU shared with other jobs, 1 thread, width 4096, d 256, batch
1024; three runs): crosscoder / SAE tokens/s 0.53-0.62 for the dictionary step and 0.53-0.61
end to end (B's forward pass is the extra); 57,344 vs 53,248 bytes per token (1.08x: only the
input rows double), 25.2 vs 12.6 MB per step besides (the decoder is twice as wide).

Model B is zoo:pycode with Gaussian noise (0.01 x each weight's std) added to every weight:
the cost does not depend on what B learned, only on its shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _machine import load_line, machine_info, machine_line

SITE = "blocks.2.hook_resid_post"


def perturbed(model, scale: float):
    import copy

    from mechscope.model import Model

    hf = copy.deepcopy(model.hf)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(scale * p.std().nan_to_num(0) * torch.randn(p.shape, generator=gen).to(p))
    return Model(hf, model.tokenizer, name=model.name + "+noise")


def saved_bytes(coder, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one forward of `coder` on `x`, plus x itself."""
    total = [x.numel() * x.element_size()]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        coder(x).loss.backward()
    coder.zero_grad(set_to_none=True)
    return total[0]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=4096, help="latents of both dictionaries")
    ap.add_argument("--batch", type=int, default=1024, help="tokens per step")
    ap.add_argument("--steps", type=int, default=8, help="steps per timed sample")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved samples per variant")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--contexts", type=int, default=96, help="contexts of 64 tokens for the end-to-end runs")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = machine_info()
    print(machine_line(machine), flush=True)

    import mechscope as ms
    from mechscope.data import DataConfig, stdlib_documents, tokenize_documents
    from mechscope.dictionary.config import CoderConfig
    from mechscope.dictionary.source import (
        ActivationSource,
        SourceConfig,
        first_batches,
    )
    from mechscope.dictionary.stacked import crosscoder_config, diff_source
    from mechscope.dictionary.train import Trainer
    from mechscope.dictionary.trainer_config import TrainConfig

    model_a = ms.load("zoo:pycode")
    model_b = perturbed(model_a, 0.01)
    data = tokenize_documents(
        stdlib_documents(60),
        model_a.tokenizer,
        DataConfig("stdlib", ctx_len=64, max_tokens=args.contexts * 64, heldout_fraction=0.0),
    )
    src = SourceConfig(batch_tokens=args.batch, model_batch=32, buffer_contexts=args.contexts)
    train = TrainConfig(
        total_tokens=args.batch * 10**6, batch_tokens=args.batch, lr=1e-3, warmup_steps=0, norm_batches=1
    )
    streams = {
        "sae": ActivationSource(model_a, SITE, data.train, src),
        "crosscoder": diff_source(model_a, model_b, SITE, data.train, src, labels=("A", "B")),
    }
    d = streams["sae"].widths[SITE]
    cfgs = {
        "sae": CoderConfig("relu", d, args.width, l1_coeff=1.0, hook_name=SITE),
        "crosscoder": crosscoder_config(streams["crosscoder"], args.width, l1_coeff=1.0),
    }
    trainers = {}
    for name, stream in streams.items():
        trainers[name] = Trainer(stream, [cfgs[name]], train, device="cpu")
        trainers[name].setup()
    batches = {name: first_batches(streams[name], 1) for name in streams}

    def dictionary_only(name):
        t = time.perf_counter()
        for _ in range(args.steps):
            trainers[name].step(batches[name])
        return args.steps * args.batch / (time.perf_counter() - t)

    iters = {name: streams[name].batches() for name in streams}

    def end_to_end(name):
        t = time.perf_counter()
        for _ in range(args.steps):
            batch, _ = next(iters[name])
            trainers[name].step(batch)
        return args.steps * args.batch / (time.perf_counter() - t)

    names = list(streams)
    samples = {(kind, n): [] for kind in ("dictionary", "end_to_end") for n in names}
    for name in names:  # warm-up (and the first block of each stream)
        dictionary_only(name), end_to_end(name)
    for r in range(args.rounds):
        order = names[r % 2 :] + names[: r % 2]
        for kind, fn in (("dictionary", dictionary_only), ("end_to_end", end_to_end)):
            for name in order:
                samples[(kind, name)].append(fn(name))
    med = {f"{kind}.{n}": statistics.median(v) for (kind, n), v in samples.items()}
    memory, fixed = {}, {}
    for n in names:  # the slope over batch sizes is per token; the intercept is per step (weight-sized tensors)
        coder, x = trainers[n].coders[0], batches[n][trainers[n].cfgs[0].hook_name]
        half, whole = saved_bytes(coder, x[: args.batch // 2]), saved_bytes(coder, x)
        memory[n] = (whole - half) / (args.batch - args.batch // 2)
        fixed[n] = whole - memory[n] * args.batch
    result = {
        "model": "zoo:pycode (+ a perturbed copy)",
        "site": SITE,
        "d": d,
        "width": args.width,
        "batch_tokens": args.batch,
        "threads": args.threads,
        "tokens_per_s": {k: round(v) for k, v in med.items()},
        "ratio_dictionary_step": med["dictionary.crosscoder"] / med["dictionary.sae"],
        "ratio_end_to_end": med["end_to_end.crosscoder"] / med["end_to_end.sae"],
        "bytes_per_token": {n: round(v) for n, v in memory.items()},
        "bytes_per_step_besides_tokens": {n: round(v) for n, v in fixed.items()},
        "memory_ratio": memory["crosscoder"] / memory["sae"],
        "machine": machine,
    }
    print(json.dumps(result, indent=1))
    print(load_line())
    if args.json:
        from pathlib import Path

        from mechscope.io import write_json

        write_json(Path(args.json), result)
    return result


if __name__ == "__main__":
    main()
