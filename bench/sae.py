"""TopK SAE training throughput: mechscope vs sparsify vs SAELens on the same activations.

    .venv/bin/python bench/sae.py                     # zoo:pycode blocks.2.hook_resid_post, width 4096, k 32
    .venv/bin/python bench/sae.py --steps 6 --rounds 2 --threads 2 --json out/sae-bench.json

1. Caches `blocks.2.hook_resid_post` of zoo:pycode over held-out standard-library files
   with `mechscope.dictionary.write_cache` (out/bench-sae/acts; reused when present), shuffles
   the rows (seed 0), scales them to mean norm sqrt(d_in) and writes one safetensors file
   every trainer reads, so all see the same batches in the same order.
2. Measures this machine's dense fp32 matmul rate (torch.mm, the encoder's shape, into a
   preallocated output; best of 6 in every round, the best round kept: a fresh 64 MB output
   would add page faults, and a noisy round would lower the rate, both flattering the ratio).
3. Runs each trainer in its own interpreter (`bench/_sae_peers.py`; peers from
   bench/.peers/sparsify and bench/.peers/saelens), `--rounds` times in rotating order,
   and reports the median tokens/s, the ratio mechscope / peer, the held-out FVU after the
   same number of steps (the same tokens), and mechscope's achieved FLOP/s / the matmul rate.
4. "At equal FVU": every trainer's held-out FVU is measured after every step (outside the
   timed region). For each peer the target is the worse of the two final FVUs; the time to
   reach it is (steps until held-out FVU <= target) x (median seconds per step), and the
   ratio peer time / mechscope time is reported next to the tokens/s ratio.

Each trainer starts as its own trainer starts it (the same data, the same seeds where the
library takes one; until 2026-12-07 the peers skipped their trainers' data-driven init
while mechscope kept its own, which inflated "time to equal FVU" about fivefold):

- mechscope (`dictionary.train.Trainer.setup`, `--norm-batches 1`, i.e. the first batch
  only, the batch sparsify's init sees): input scale sqrt(d_in) / mean norm of that batch
  (about 1 here: the rows are already scaled), b_dec = its geometric median; W_dec random
  unit rows, W_enc = c W_dec^T with c = `topk.encoder_init_scale` (0.52 at k 32, width 4096,
  d_in 256), b_enc 0.
- sparsify 1.3.3 (`Trainer`; its per-step body followed line by line, see
  `_sae_peers.sparsify_trainer`): torch.manual_seed(0), encoder nn.Linear (kaiming
  uniform), encoder bias 0, W_dec = the encoder's rows at unit norm (so W_enc = W_dec^T with
  rows of norm about 1/sqrt(3) = 0.58), b_dec = the mean of the first batch (set on step 0,
  as its forward hook does). No input scaling (it has none).
- SAELens 6.54.12 (its own `SAETrainer.step`): `TopKTrainingSAEConfig` defaults, i.e. W_dec
  kaiming uniform with rows at norm 0.1 (decoder_init_norm), W_enc = W_dec^T, b_enc 0,
  b_dec 0 (this version has no data-driven b_dec init: no b_dec_init_method, and its trainer
  never sets b_dec), normalize_activations "none" (no input scale),
  rescale_acts_by_decoder_norm True.

Same for all: Adam (0.9, 0.999) at a constant `--lr` 4e-4 (sparsify's own default rate at
4096 latents; SAELens' runner default is 3e-4, constant; sparsify's default schedule warms up
over 1000 steps, which would leave it untrained in a 10-step bench), the same batches in the
same order. Each library's own loss and decoder constraint. `--with-bare` adds the old
sparsify variant without its b_dec init ("sparsify-bare"), to show what that line is worth.

Width sweep (issue 24): `--widths 4096,16384,65536,262144` times every trainer at every width
instead, each (trainer, width, round) in its own interpreter so that each peak RSS
(VmHWM, printed per width) is that trainer's alone; `--sweep-batch` and
`--sweep-steps` (one value, or one per width) set tokens per step and timed steps (after 2
warm-up steps); `--mechscope-adam dense,lazy` times mechscope with each optimiser. A width
whose estimated need (`memory_needed`) exceeds MemAvailable is skipped and says so. Goal:
mechscope >= 3x sparsify's tokens/s up to 65,536 latents, >= 2x at 262,144. The held-out
FVU after the few sweep steps is printed to show that every trainer trained, not to rank
them (the single-width bench above does that).

    .venv/bin/python bench/sae.py --widths 4096,16384,65536,262144 --sweep-steps 4,3,2,2 \
        --mechscope-adam dense,lazy --threads 1 --json out/sae-sweep.json

Peers' environments (git-ignored; torch first and pinned, so that no CUDA build is pulled):

    python3.11 -m venv bench/.peers/sparsify && bench/.peers/sparsify/bin/pip install torch==2.13.0
    bench/.peers/sparsify/bin/pip install eai-sparsify==1.3.3      # EleutherAI's (PyPI "sparsify" is another project)
    python3.11 -m venv bench/.peers/saelens && bench/.peers/saelens/bin/pip install torch==2.13.0
    bench/.peers/saelens/bin/pip install sae-lens==6.54.12

A peer whose environment is missing is skipped with a note.

FLOPs per step (B tokens, d_in D, width S, k active), counted for mechscope's kernels:
encoder forward 2BDS (dense: top-k needs every pre-activation), decoder forward 2BkD,
decoder backward 4BkD (W_dec rows and the k values), encoder backward 2BkD (W_enc columns;
the b_dec gradient is one matrix-vector product, 2DS, and no input gradient is formed):
2BDS + 8BkD "executed". The dense equivalent (every GEMM dense, as a naive implementation
runs them: forward, input gradient and weight gradient for encoder and decoder) is 12BDS.
Both rates are reported, labelled; only the executed one is what the machine did.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _machine import load_line, machine_info, machine_line

ROOT = Path(__file__).resolve().parents[1]
PEERS = {"sparsify": ROOT / "bench/.peers/sparsify/bin/python", "saelens": ROOT / "bench/.peers/saelens/bin/python"}
PYTHON = {**PEERS, "sparsify-bare": PEERS["sparsify"]}
SITE = "blocks.2.hook_resid_post"


def prepare(out: Path, n_tokens: int) -> Path:
    """Cache the site, then write shuffled, scaled train/held-out rows to one file."""
    import mechscope as ms
    from mechscope.data import DataConfig, stdlib_documents, tokenize_documents
    from mechscope.dictionary.cache import CacheReader, write_cache
    from mechscope.dictionary.source import estimate_norm_scale
    from mechscope.io import write_tensors

    path = out / "acts.safetensors"
    if path.is_file():
        return path
    model = ms.load("zoo:pycode")
    data = tokenize_documents(
        stdlib_documents(200),
        model.tokenizer,
        DataConfig("stdlib", ctx_len=128, max_tokens=n_tokens, heldout_fraction=0.0),
    )
    write_cache(model, SITE, data.train, out / "acts", progress=True)
    reader = CacheReader(out / "acts")
    rows = reader.rows(torch.randperm(reader.n_tokens, generator=torch.Generator().manual_seed(0)))[SITE]
    rows = rows * estimate_norm_scale(rows[:8192])
    held = min(8192, len(rows) // 8)
    write_tensors(path, {"train": rows[:-held], "heldout": rows[-held:]})
    return path


def matmul_flops(d_in: int, width: int, batch: int, threads: int, dtype=torch.float32) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(batch, d_in).to(dtype), torch.randn(d_in, width).to(dtype)
    out = torch.empty(batch, width, dtype=dtype)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * batch * d_in * width / best


def run_worker(lib: str, acts: Path, args, extra: tuple[str, ...] = (), curve: bool = True) -> dict:
    """One trainer in its own interpreter; `extra` flags (a sweep's width, batch, ...) come
    after the single-width ones and override them."""
    python = sys.executable if lib == "mechscope" else str(PYTHON[lib])
    cmd = [
        python,
        str(ROOT / "bench/_sae_peers.py"),
        lib,
        str(acts),
        "--steps",
        str(args.steps),
        "--warmup",
        "2",
        *(["--curve"] if curve else []),
        "--width",
        str(args.width),
        "--k",
        str(args.k),
        "--batch",
        str(args.batch),
        "--threads",
        str(args.threads),
        "--lr",
        str(args.lr),
        *extra,
    ]
    done = subprocess.run(
        cmd,
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            "OMP_NUM_THREADS": str(args.threads),
            "PATH": "/usr/bin:/bin",
            "HOME": "/root",
            "PYTHONPATH": str(ROOT / "src"),
        },
    )
    if done.returncode != 0:
        if done.returncode < 0:  # e.g. SIGKILL from the kernel's OOM killer: no traceback
            return {"lib": lib, "error": f"killed by signal {-done.returncode} (out of memory?)"}
        return {"lib": lib, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=8, help="timed steps per run (after 2 warm-up steps)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=90_000, help="tokens to cache")
    p.add_argument("--out", default=str(ROOT / "out/bench-sae"))
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--lr", type=float, default=4e-4, help="Adam's constant rate, every trainer")
    p.add_argument(
        "--with-bare",
        action="store_true",
        help="also time sparsify without its trainer's b_dec init (what this bench did until 2026-12-07)",
    )
    p.add_argument(
        "--widths",
        help="comma list: run the width sweep (see the module docstring) instead of the single-width bench",
    )
    p.add_argument("--sweep-batch", default="1024", help="sweep: tokens per step, one value or one per width")
    p.add_argument("--sweep-steps", default="3", help="sweep: timed steps after 2 warm-up, one value or one per width")
    p.add_argument(
        "--mechscope-adam",
        default="dense",
        help="sweep: comma list of TrainConfig.adam variants to time mechscope with (dense, lazy)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.widths:
        return sweep(p, args)
    if args.mechscope_adam != "dense":
        p.error("--mechscope-adam applies to the width sweep (--widths)")
    machine = machine_info()
    print(machine_line(machine), flush=True)
    if (args.steps + 2) * args.batch > args.tokens * 0.85:
        p.error("not enough cached tokens for that many steps: raise --tokens")
    acts = prepare(Path(args.out), args.tokens)
    libs = ["mechscope"] + [lib for lib, py in PEERS.items() if py.is_file()]
    if args.with_bare and PEERS["sparsify"].is_file():
        libs.append("sparsify-bare")
    missing = [lib for lib, py in PEERS.items() if not py.is_file()]
    runs: dict[str, list[dict]] = {lib: [] for lib in libs}
    peak, peak16, load = [], [], [os.getloadavg()[0]]
    for r in range(args.rounds):
        peak.append(matmul_flops(256, args.width, args.batch, args.threads))
        peak16.append(matmul_flops(256, args.width, args.batch, args.threads, torch.bfloat16))
        for lib in libs[r % len(libs) :] + libs[: r % len(libs)]:
            runs[lib].append(run_worker(lib, acts, args))
        load.append(os.getloadavg()[0])
    report = summarise(runs, max(peak), max(peak16), args)  # the best rates seen: noise only ever lowers them
    report["load_average_1min"] = load
    report["machine"] = machine
    report["missing_peers"] = missing
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def per_width(p, flag: str, text: str, widths: list[int]) -> list[int]:
    """One positive int per width from "N" (every width) or "N1,N2,..." (one each)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        p.error(f"{flag}: expected comma-separated integers, got {text!r}")
    if len(values) == 1:
        values *= len(widths)
    if len(values) != len(widths) or min(values) < 1:
        p.error(f"{flag}: give one positive value or one per width ({len(widths)}), got {text!r}")
    return values


def adam_variants(p, text: str) -> list[str]:
    """The requested mechscope Adam variants this mechscope has (a note for each it lacks)."""
    from dataclasses import fields

    from mechscope.dictionary.trainer_config import TrainConfig

    wanted = [v.strip() for v in text.split(",") if v.strip()]
    if not wanted or set(wanted) - {"dense", "lazy"}:
        p.error(f"--mechscope-adam: a comma list of dense and lazy, got {text!r}")
    if "adam" in {f.name for f in fields(TrainConfig)}:
        return wanted
    for v in wanted:
        if v != "dense":
            print(f"note: this mechscope's TrainConfig has no 'adam' field: adam={v!r} not timed", flush=True)
    return ["dense"] if "dense" in wanted else []


def mem_available() -> int:
    """Bytes the kernel says a new process could use without swapping (0 where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 0


def memory_needed(d_in: int, width: int, batch: int) -> int:
    """A generous estimate of one trainer's peak at this width: parameters, gradients and
    Adam's two moments (4 copies of (2 d_in + 1) floats per latent), about six dense
    [batch, width] float tensors (SAELens' step keeps pre-activations, the TopK output and
    their gradients dense), 1 GB for torch, the data and the rest."""
    return 16 * (2 * d_in + 1) * width + 6 * 4 * batch * width + 2**30


def sparsify_goal(width: int) -> float:
    """Issue 24's goal for mechscope / sparsify tokens/s at this width."""
    return 3.0 if width <= 65536 else 2.0


def sweep(p, args) -> int:
    """Every trainer at every width, one interpreter per (trainer, width, round); see the docstring."""
    from safetensors import safe_open

    widths = [int(w) for w in args.widths.split(",")]
    batches = per_width(p, "--sweep-batch", args.sweep_batch, widths)
    steps = per_width(p, "--sweep-steps", args.sweep_steps, widths)
    machine = machine_info()
    print(machine_line(machine), flush=True)
    variants = adam_variants(p, args.mechscope_adam)
    acts = prepare(Path(args.out), args.tokens)
    with safe_open(str(acts), "pt") as f:
        n_train, d_in = f.get_slice("train").get_shape()
    for w, b, n in zip(widths, batches, steps):
        if (n + 2) * b > n_train:
            p.error(f"width {w}: {n + 2} steps of {b} tokens need more than the {n_train} cached rows")
    peers = [lib for lib, py in PEERS.items() if py.is_file()]
    # label -> (worker lib, extra worker flags)
    trainers = {f"mechscope-{v}": ("mechscope", ("--adam", v)) for v in variants}
    trainers.update({lib: (lib, ()) for lib in peers})
    print(
        f"TopK SAE width sweep: d_in {d_in}, k {args.k}, lr {args.lr}, {args.threads} threads, 2 warm-up steps, "
        f"{args.rounds} rounds in rotating order; each (trainer, width, round) in its own interpreter",
        flush=True,
    )
    report = {
        "mode": "sweep",
        "config": vars(args),
        "machine": machine,
        "d_in": d_in,
        "missing_peers": [lib for lib, py in PEERS.items() if not py.is_file()],
        "mechscope_adam": variants,
        "widths": [],
    }
    for width, batch, n_steps in zip(widths, batches, steps):
        report["widths"].append(sweep_width(trainers, acts, args, width, batch, n_steps, d_in))
    print_sweep_summary(report)
    for lib in report["missing_peers"]:
        print(f"{lib}: not installed (see bench/README.md); not timed")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def sweep_width(trainers: dict, acts: Path, args, width: int, batch: int, n_steps: int, d_in: int) -> dict:
    start = machine_info()
    print(f"\n== width {width:,}: batch {batch}, 2 warm-up + {n_steps} timed steps x {args.rounds} rounds ==")
    print(machine_line(start), flush=True)
    need, free = memory_needed(d_in, width, batch), mem_available()
    entry = {"width": width, "batch": batch, "steps": n_steps, "warmup": 2, "machine_start": start}
    entry["memory_needed_gb"], entry["memory_available_gb"] = need / 2**30, free / 2**30
    if free and need > free:
        print(f"skipped: needs about {need / 2**30:.1f} GB per trainer, {free / 2**30:.1f} GB available", flush=True)
        entry["skipped"] = "memory"
        return entry
    flags = ("--width", str(width), "--batch", str(batch), "--steps", str(n_steps), "--eval-chunk", str(batch))
    labels = list(trainers)
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    for r in range(args.rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            lib, extra = trainers[label]
            runs[label].append(run_worker(lib, acts, args, (*flags, *extra), curve=False))
    rows = {}
    for label, results in runs.items():
        ok = [x for x in results if "error" not in x]
        if not ok:
            rows[label] = {"error": results[0]["error"]}
            continue
        rows[label] = {
            "version": ok[0]["version"],
            "tokens_per_s": statistics.median(x["tokens_per_s"] for x in ok),
            "tokens_per_s_each_round": [x["tokens_per_s"] for x in ok],
            "fvu": statistics.median(x["fvu"] for x in ok),
            "peak_rss_train_mb": max(x["peak_rss_train_mb"] for x in ok),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in ok),
        }
    ratios = {}
    for label, row in rows.items():
        if label.startswith("mechscope") and "tokens_per_s" in row:
            ratios[label] = {
                peer: row["tokens_per_s"] / rows[peer]["tokens_per_s"]
                for peer in rows
                if not peer.startswith("mechscope") and "tokens_per_s" in rows[peer]
            }
    entry.update(rows=rows, ratios=ratios, sparsify_goal=sparsify_goal(width), machine_end=machine_info())
    print_sweep_width(entry)
    return entry


def print_sweep_width(e: dict) -> None:
    steps = e["warmup"] + e["steps"]
    print(
        f"{'trainer':<16}{'version':<12}{'tokens/s':>10}{f'FVU@{steps}':>10}{'peak RSS MB':>13}"
        f"{'(+eval)':>9}  tokens/s per round"
    )
    for label, row in e["rows"].items():
        if "error" in row:
            print(f"{label:<16}error: {row['error']}")
            continue
        rounds = " ".join(f"{t:,.0f}" for t in row["tokens_per_s_each_round"])
        print(
            f"{label:<16}{row['version']:<12}{row['tokens_per_s']:>10,.0f}{row['fvu']:>10.4f}"
            f"{row['peak_rss_train_mb']:>13,.0f}{row['peak_rss_mb']:>9,.0f}  {rounds}"
        )
    for label, by_peer in e["ratios"].items():
        for peer, ratio in by_peer.items():
            goal = ""
            if peer == "sparsify":
                met = "met" if ratio >= e["sparsify_goal"] else "NOT met"
                goal = f"  (goal >= {e['sparsify_goal']:.0f}x: {met})"
            print(f"{label} / {peer}: {ratio:.2f}x{goal}")
    print(machine_line(e["machine_end"]), flush=True)


def print_sweep_summary(report: dict) -> None:
    """One markdown table of every width, for bench/README.md."""
    peers = [lib for lib in PEERS if lib not in report["missing_peers"]]
    print("\n| width | batch x steps | trainer | tokens/s | " + " | ".join(f"mechscope / {p}" for p in peers), end="")
    print(" | held-out FVU | peak RSS (train / +eval) | 1-min load start / end |")
    print("| --- " * (7 + len(peers)) + "|")
    for e in report["widths"]:
        load = f"{e['machine_start']['load_average'][0]:.2f}"
        if "skipped" in e:
            print(f"| {e['width']:,} | | skipped: {e['skipped']} | " + "| " * (len(peers) + 3) + f"{load} / |")
            continue
        load += f" / {e['machine_end']['load_average'][0]:.2f}"
        for label, row in e["rows"].items():
            cells = [f"{e['width']:,}", f"{e['batch']} x {e['warmup']}+{e['steps']}", label]
            if "error" in row:
                print("| " + " | ".join(cells + [f"error: {row['error']}"] + [""] * (len(peers) + 2) + [load]) + " |")
                continue
            ratios = e["ratios"].get(label, {})
            cells.append(f"{row['tokens_per_s']:,.0f}")
            cells += [f"{ratios[p]:.2f}" if p in ratios else "" for p in peers]
            cells += [f"{row['fvu']:.4f}", f"{row['peak_rss_train_mb']:,.0f} / {row['peak_rss_mb']:,.0f} MB", load]
            print("| " + " | ".join(cells) + " |")
    print(load_line())


def steps_to(curve: list[float], target: float) -> int | None:
    """1-based step after which the held-out FVU first is <= target (None: never)."""
    return next((i + 1 for i, f in enumerate(curve) if f <= target), None)


def equal_fvu(rows: dict, curves: dict) -> dict:
    """Per peer: time for each trainer to reach the worse of the two final FVUs."""
    ms, out = rows["mechscope"], {}
    for lib, row in rows.items():
        if lib == "mechscope" or "fvu" not in row or not curves.get(lib) or not curves.get("mechscope"):
            continue
        target = max(ms["fvu"], row["fvu"])
        n_ms, n_peer = steps_to(curves["mechscope"], target), steps_to(curves[lib], target)
        t_ms, t_peer = n_ms * ms["step_s"], n_peer * row["step_s"]
        out[lib] = {
            "target_fvu": target,
            "mechscope_steps": n_ms,
            "peer_steps": n_peer,
            "mechscope_s": t_ms,
            "peer_s": t_peer,
            "peer_time_over_mechscope": t_peer / t_ms,
        }
    return out


def summarise(runs: dict, peak: float, peak16: float, args) -> dict:
    B, D, S, k = args.batch, 256, args.width, args.k
    executed, dense = 2 * B * D * S + 8 * B * k * D, 12 * B * D * S
    # with the bf16 selection the encoder GEMM runs at the bf16 rate: the share of the step the
    # machine would need at its peak rates, each FLOP at the rate of the precision it ran in
    peak_seconds = 2 * B * D * S / peak16 + 8 * B * k * D / peak
    rows = {}
    for lib, results in runs.items():
        ok = [r for r in results if "error" not in r]
        if not ok:
            rows[lib] = {"error": results[0]["error"]}
            continue
        tps = statistics.median(r["tokens_per_s"] for r in ok)
        rows[lib] = {
            "version": ok[0]["version"],
            "tokens_per_s": tps,
            "fvu": statistics.median(r["fvu"] for r in ok),
            "step_s": statistics.median(t for r in ok for t in r["step_s"]),
            "tokens_per_s_each_round": [r["tokens_per_s"] for r in ok],
            "executed_flops_per_s": tps / B * executed,
            "bf16_selection": any(r.get("bf16_selection") for r in ok),
        }
    ms_tps = rows["mechscope"].get("tokens_per_s")
    for lib, row in rows.items():
        if ms_tps and "tokens_per_s" in row:
            row["mechscope_speedup"] = ms_tps / row["tokens_per_s"]
    curves = {lib: next((r["fvu_curve"] for r in results if r.get("fvu_curve")), []) for lib, results in runs.items()}
    ms_bf16 = rows["mechscope"].get("bf16_selection", False)
    return {
        "config": vars(args),
        "matmul_flops_per_s": peak,
        "bf16_matmul_flops_per_s": peak16,
        "libs": rows,
        "fvu_curves": curves,
        "mechscope_bf16_selection": ms_bf16,
        "mechscope_peak_time_share": (ms_tps or 0) / B * (peak_seconds if ms_bf16 else executed / peak),
        "equal_fvu": equal_fvu(rows, curves),
        "mechscope_executed_flops_ratio": rows["mechscope"].get("executed_flops_per_s", 0) / peak,
        "mechscope_dense_equivalent_flops_ratio": (ms_tps or 0) / B * dense / peak,
    }


def print_report(report: dict) -> None:
    c = report["config"]
    print(
        f"TopK SAE d_in 256, width {c['width']}, k {c['k']}, batch {c['batch']} tokens, {c['threads']} threads, "
        f"{c['steps']} timed steps x {c['rounds']} rounds"
    )
    print(
        f"dense matmul (preallocated output): fp32 {report['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s, bf16 "
        f"{report['bf16_matmul_flops_per_s'] / 1e9:.1f} GFLOP/s; "
        f"1-min load average {', '.join(f'{x:.2f}' for x in report.get('load_average_1min', []))}"
    )
    steps = c["steps"] + 2
    print(f"{'library':<14}{'version':<12}{'tokens/s':>12}{'ms/peer':>10}{f'FVU@{steps}':>10}  tokens/s per round")
    for lib, row in report["libs"].items():
        if "error" in row:
            print(f"{lib:<14}error: {row['error']}")
            continue
        rounds = " ".join(f"{t:,.0f}" for t in row["tokens_per_s_each_round"])
        print(
            f"{lib:<14}{row['version']:<12}{row['tokens_per_s']:>12,.0f}{row['mechscope_speedup']:>10.2f}"
            f"{row['fvu']:>10.4f}  {rounds}"
        )
    for lib, e in report["equal_fvu"].items():
        print(
            f"time to held-out FVU {e['target_fvu']:.4f} (the worse final): mechscope {e['mechscope_steps']} steps "
            f"{e['mechscope_s']:.2f} s, {lib} {e['peer_steps']} steps {e['peer_s']:.2f} s: "
            f"{lib} / mechscope = {e['peer_time_over_mechscope']:.2f}"
        )
    print(
        f"mechscope achieved / fp32 matmul FLOP/s: {report['mechscope_executed_flops_ratio']:.2f} counting executed "
        f"FLOPs, {report['mechscope_dense_equivalent_flops_ratio']:.2f} counting dense-equivalent FLOPs"
    )
    if report["mechscope_bf16_selection"]:
        print(
            f"  (its encoder GEMM ran in bfloat16, for the selection only: values and gradients are fp32; counting "
            f"each FLOP at the rate of its precision, the step is {report['mechscope_peak_time_share']:.2f} of "
            "the machine's time at peak)"
        )
    print(load_line())
    for lib in report.get("missing_peers", []):
        print(f"{lib}: not installed (see bench/README.md); not timed")


if __name__ == "__main__":
    sys.exit(main())
