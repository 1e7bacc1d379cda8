"""Benchmark: the lenses on `zoo:pycode`, side by side in one run.

    .venv/bin/python bench/lens.py                       # both parts, threads=1
    .venv/bin/python bench/lens.py --no-peers --steps 10  # mechscope only

(a) logit lens cost: `mechscope.lens.logit_lens(model, ids)` over every layer and
    position (embedding, resid_mid and resid_post streams; resid_post only; and every
    stream at the last position only) divided by one forward pass (`model.run(ids)`,
    logits only) on the same ids; wall-clock and process CPU time (the CPU column is the
    steadier one on a shared machine). Goal <= 1.5. Also printed: the floor that exactness
    sets, i.e. the full-vocabulary unembedding of every stream at every position alone
    (`model.to_logits` on streams x tokens rows) ÷ the forward, measured and in multiply-adds;
    and the CLI's default (`mechscope lens MODEL PROMPT`: one short prompt, k=5) ÷ a forward
    on that prompt.
(b) tuned-lens training throughput: tokens/s of mechscope's `TunedLensTrainer.step`
    divided by that of the `tuned-lens` PyPI package's own training loop
    (`tuned_lens.scripts.train_loop.Train.execute`), on the same model folder, the same
    token contexts, the same tokens per step and the same optimiser (SGD, Nesterov).
    The peer runs in its own venv (bench/.peers/tunedlens, see bench/README.md): this file
    is re-run there with --peer-worker and imports nothing from mechscope. It patches only
    the peer's data loading (to read our token tensor) and drops one keyword that
    transformers 5 no longer takes (`load_in_8bit=False`), and times each loop iteration.
    The peer is timed as shipped (bf16 autocast around the lens) and with autocast off
    (float32); mechscope likewise in float32 (its default) and with
    `TunedLensConfig(autocast="bf16")` (bf16 autocast around the same lens readings: the
    translators, final norm and unembedding, forward and backward; the model's forward and
    the target distribution stay float32, as in the peer). Every mechscope variant is
    divided by every peer variant; like for like is fp32 / fp32 and bf16 / bf16. Which is
    faster depends on the CPU: without native bf16 (no AVX512-BF16 / AMX) bf16 matmuls are
    emulated and both bf16 variants are many times slower. Goal >= 1.

Every output starts with the machine line (CPU model, threads, native bf16 flags, load
average; `bench/_machine.py`), and the load is printed again at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
MECHSCOPE_VARIANTS = {"mechscope (fp32)": "off", "mechscope (bf16 autocast)": "bf16"}
PEER_PYTHON = BENCH / ".peers" / "tunedlens" / "bin" / "python"


# --- the peer side (runs under bench/.peers/tunedlens/bin/python; no mechscope here) ---


def peer_worker(args) -> None:
    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    real_stdout, sys.stdout = sys.stdout, sys.stderr  # keep stdout for our one JSON line
    from importlib.metadata import version

    import datasets
    import tuned_lens.scripts.ingredients as ing
    import tuned_lens.scripts.train_loop as tl

    ids = load_file(args.ids)["input_ids"]
    ds = datasets.Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    ing.Data.load = lambda self, tokenizer: (ds, 1.0)  # our contexts, not its own chunking
    auto = ing.AutoModelForCausalLM

    class Auto:  # transformers 5 no longer takes the `load_in_8bit=False` that tuned-lens 0.2 passes
        @staticmethod
        def from_pretrained(*a, load_in_8bit=False, **k):
            return auto.from_pretrained(*a, **k)

    ing.AutoModelForCausalLM = Auto
    stamps: list[float] = []

    def timed_trange(*a, **k):
        for i in range(*a[:2]):
            stamps.append(time.perf_counter())
            yield i
        stamps.append(time.perf_counter())

    tl.trange = timed_trange
    if args.fp32:
        tl.th.autocast = lambda *a, **k: contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as out:
        train = tl.Train(
            model=ing.Model(name=args.model_dir, precision="float32"),
            data=ing.Data(name=["unused"]),
            opt=ing.Optimizer(),
            dist=ing.Distributed(per_gpu_batch_size=args.batch),
            output=Path(out),
            num_steps=args.steps,
            tokens_per_step=args.batch * ids.shape[1],
            seed=0,
        )
        train.execute()
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    real_stdout.write(
        json.dumps(
            {
                "step_s": steps,
                "versions": {
                    "tuned-lens": version("tuned-lens"),
                    "torch": torch.__version__,
                    "transformers": version("transformers"),
                },
            }
        )
        + "\n"
    )


# --- the mechscope side ---


def corpus(model, ctx: int, n: int):
    """`n` contexts of `ctx` tokens from stdlib files zoo:pycode never trained on."""
    from mechscope.data import DataConfig, stdlib_documents, tokenize_documents

    data = tokenize_documents(
        stdlib_documents(split="heldout"),
        model.tokenizer,
        DataConfig("stdlib", ctx_len=ctx, max_tokens=n * ctx + 1, heldout_fraction=0),
    )
    return data.train[:n]


def time_calls(fns: dict, repeats: int, warmup: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Interleaved timings, wall-clock and process CPU (the start of the cycle rotates every repeat)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names, wall, cpu = list(fns), {k: [] for k in fns}, {k: [] for k in fns}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


CLI_PROMPT = "def add(a, b):\n    return a + b\n\nclass Point:\n    def __init__(self, x, y):\n        self.x ="


def forward_macs(model, ctx: int) -> tuple[int, int]:
    """Multiply-adds per token of one forward (every Linear weight once, plus causal attention
    scores and mixing at mean length ctx/2), and of one full-vocabulary unembedding."""
    import torch

    linear = sum(m.weight.numel() for m in model.hf.modules() if isinstance(m, torch.nn.Linear))
    d = model.dims
    attention = 2 * d.n_layers * d.n_heads * d.d_head * ctx // 2
    return linear + attention, d.d_model * d.d_vocab


def bench_logit_lens(model, ids, args) -> dict:
    import torch

    from mechscope.lens.logit import logit_lens

    streams = len(logit_lens(model, ids[:1]).layers)
    rows = torch.randn(streams * ids.numel(), model.dims.d_model)
    chunk = 1024
    fns = {
        "forward": lambda: model.run(ids),
        "logit_lens": lambda: logit_lens(model, ids),
        "logit_lens_post": lambda: logit_lens(model, ids, include_mid=False),
        "logit_lens_last": lambda: logit_lens(model, ids, positions=-1),
        "unembed_only": lambda: [model.to_logits(rows[i : i + chunk]) for i in range(0, len(rows), chunk)],
        "cli_forward": lambda: model.run(CLI_PROMPT),
        "cli_lens": lambda: logit_lens(model, CLI_PROMPT, k=5),
    }
    with torch.inference_mode():
        wall, cpu = time_calls(fns, args.repeats, args.warmup)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    ratio = lambda m, k: m[k] / m["cli_forward" if k.startswith("cli") else "forward"]  # noqa: E731
    fwd, unembed = forward_macs(model, ids.shape[1])
    return {
        "median_s": med,
        "median_cpu_s": med_cpu,
        "ratio": {k: ratio(med, k) for k in med},
        "ratio_cpu": {k: ratio(med_cpu, k) for k in med_cpu},
        "streams": streams,
        "shape": list(ids.shape),
        "cli_tokens": int(model.run(CLI_PROMPT).tokens.shape[1]),
        "macs_per_token": {
            "forward": fwd,
            "unembed": unembed,
            "lens_floor_ratio": ((fwd - unembed) + streams * unembed) / fwd,
        },
    }


def bench_ours(model, data, args, autocast: str = "off") -> list[float]:
    from mechscope.lens.tuned import TunedLensConfig, TunedLensTrainer

    steps = args.steps if autocast == "off" else min(args.steps, args.bf16_steps)  # bf16 without native support is slow
    trainer = TunedLensTrainer(
        model, TunedLensConfig(steps=steps + args.warmup, batch_size=args.batch, autocast=autocast)
    )
    times = []
    for _ in range(steps + args.warmup):
        start = time.perf_counter()
        trainer.step(data)
        times.append(time.perf_counter() - start)
    return times[args.warmup :]


def bench_peer(folder: Path, ids_file: Path, args, fp32: bool) -> dict | None:
    steps = args.steps if fp32 else min(args.steps, args.bf16_steps)  # bf16 on CPU is very slow
    cmd = [
        str(PEER_PYTHON),
        __file__,
        "--peer-worker",
        "--model-dir",
        str(folder),
        "--ids",
        str(ids_file),
        "--steps",
        str(steps + args.warmup),
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd + (["--fp32"] if fp32 else []), capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        print(f"tuned-lens peer failed (exit {proc.returncode})", file=sys.stderr)
        return None
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["step_s"] = out["step_s"][args.warmup :]
    return out


def bench_tuned_lens(model, folder: Path, data, args, tmp: Path) -> dict:
    from safetensors.torch import save_file

    ids_file = tmp / "ids.safetensors"
    save_file({"input_ids": data.contiguous()}, str(ids_file))
    tokens = args.batch * data.shape[1]
    rows: dict[str, list[float]] = {k: [] for k in MECHSCOPE_VARIANTS}
    versions = None
    for _ in range(args.rounds):  # alternate, so that drift on a shared machine hits both
        for label, autocast in MECHSCOPE_VARIANTS.items():
            if autocast == "off" or args.bf16_steps > 0:
                rows[label] += bench_ours(model, data, args, autocast)
        if args.peers and PEER_PYTHON.exists():
            for label, fp32 in (("tuned-lens (bf16 autocast, as shipped)", False), ("tuned-lens (fp32)", True)):
                if not fp32 and args.bf16_steps == 0:
                    continue
                peer = bench_peer(folder, ids_file, args, fp32)
                if peer:
                    rows.setdefault(label, []).extend(peer["step_s"])
                    versions = peer["versions"]
    tps = {k: tokens / statistics.median(v) for k, v in rows.items() if v}
    ours = [k for k in MECHSCOPE_VARIANTS if k in tps]
    return {
        "tokens_per_step": tokens,
        "tokens_per_s": tps,
        "peer_versions": versions,
        "ratio": {m: {k: tps[m] / v for k, v in tps.items() if k not in MECHSCOPE_VARIANTS} for m in ours},
        "steps_timed": {k: len(v) for k, v in rows.items()},
    }


def report(a: dict | None, b: dict | None, args) -> None:
    if a:
        report_logit_lens(a, args)
    if b:
        print(
            f"\n(b) tuned-lens training, {b['tokens_per_step']} tokens per step, {args.threads} thread(s), "
            f"median step; peer {b['peer_versions']}"
        )
        ours = list(b["ratio"])
        tag = {"mechscope (fp32)": "mechscope fp32 ÷ it", "mechscope (bf16 autocast)": "mechscope bf16 ÷ it"}
        print(f"  {'trainer':<44}{'tokens/s':>10}" + "".join(f"{tag[m]:>22}" for m in ours))
        for k, v in b["tokens_per_s"].items():
            ratios = "" if k in MECHSCOPE_VARIANTS else "".join(f"{b['ratio'][m][k]:>22.2f}" for m in ours)
            print(f"  {k:<44}{v:>10.0f}{ratios}")
        print("  goal: mechscope ÷ tuned-lens >= 1 (like for like: fp32 ÷ fp32, bf16 ÷ bf16 as shipped)")


def report_logit_lens(a: dict, args) -> None:
    m, c, r, rc = a["median_s"], a["median_cpu_s"], a["ratio"], a["ratio_cpu"]
    print(
        f"\n(a) logit lens over all layers and positions, {a['shape'][0]} x {a['shape'][1]} tokens, "
        f"{args.threads} thread(s), median of {args.repeats}"
    )
    print(f"  {'variant':<52}{'wall s':>9}{'÷ fwd':>7}{'CPU s':>9}{'÷ fwd':>7}")
    rows = [
        ("forward", "one forward pass (model.run, logits)"),
        ("logit_lens", f"logit_lens, all {a['streams']} streams (with resid_mid)"),
        ("logit_lens_post", "logit_lens, resid_post only"),
        ("logit_lens_last", "logit_lens, all streams, last position only"),
        ("unembed_only", f"floor: to_logits of {a['streams']} streams x all tokens"),
    ]
    rows += [
        ("cli_forward", f"CLI prompt ({a['cli_tokens']} tokens): one forward"),
        ("cli_lens", "CLI default: logit_lens(prompt, k=5)"),
    ]
    for key, label in rows:
        print(f"  {label:<52}{m[key]:>9.4f}{r[key]:>7.2f}{c[key]:>9.4f}{rc[key]:>7.2f}")
    macs = a["macs_per_token"]
    print(
        f"  multiply-adds per token: forward {macs['forward']:,}, one unembedding {macs['unembed']:,}; "
        f"lens (forward without its unembedding + {a['streams']} unembeddings) ÷ forward = "
        f"{macs['lens_floor_ratio']:.2f}"
    )
    print("  goal: logit lens ÷ forward <= 1.5")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="zoo:pycode", help="zoo:NAME or a Hugging Face folder with a tokenizer")
    p.add_argument("--ctx", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per round and trainer")
    p.add_argument("--rounds", type=int, default=2, help="alternations of mechscope and the peer")
    p.add_argument(
        "--bf16-steps",
        type=int,
        default=4,
        help="timed steps of the bf16-autocast variants (the peer as shipped, mechscope bf16) per round",
    )
    p.add_argument("--repeats", type=int, default=15, help="timed calls per logit-lens variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-peers", dest="peers", action="store_false")
    p.add_argument("--only", choices=["logit", "tuned"], help="run one part only")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--peer-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--ids", help=argparse.SUPPRESS)
    p.add_argument("--fp32", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.peer_worker:
        return peer_worker(args)

    import torch
    from _machine import load_line, machine_info, machine_line

    import mechscope as ms
    from mechscope.models.loading import resolve_source

    torch.set_num_threads(args.threads)
    machine = machine_info()
    print(machine_line(machine))
    os.environ["HF_HUB_OFFLINE"] = "1"
    model = ms.load(args.model)
    folder = Path(resolve_source(args.model)[0])
    data = corpus(model, args.ctx, max(64, args.batch * (args.steps + args.warmup)))
    a = bench_logit_lens(model, data[: args.batch], args) if args.only in (None, "logit") else None
    if args.peers and not PEER_PYTHON.exists():
        print(f"peer skipped: {PEER_PYTHON} is missing; create it as bench/README.md says")
    with tempfile.TemporaryDirectory() as tmp:
        b = bench_tuned_lens(model, folder, data, args, Path(tmp)) if args.only in (None, "tuned") else None
    report(a, b, args)
    print(load_line())
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "logit_lens": a,
                    "tuned_lens": b,
                    "threads": args.threads,
                    "machine": machine,
                    "load_average_end": os.getloadavg(),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
