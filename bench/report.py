"""Benchmark: how the cost of `mechscope report` grows with the prompt, side by side in one run.

    .venv/bin/python bench/report.py                          # zoo:pycode and a 2,048-position GPT-2 shape
    .venv/bin/python bench/report.py --lengths 128,512,2048 --rounds 2 --threads 1
    .venv/bin/python bench/report.py --src /tmp/old/src       # also the code of another checkout, same prompts

Prompts are real Python: the source of standard-library modules (`inspect.getsource`),
cut to 128, 512 and 2,048 tokens of each model's own tokenizer, capped at the positions
the model reads (zoo:pycode reads 128, so its long point is 128; the GPT-2-shape model,
random weights with pycode's tokenizer, reads 2,048). Each report runs in a fresh
`python -m mechscope report` process; the bench times it and reads the child's peak RSS
(wait4). Printed: seconds and peak memory per length, and their ratios to the 128-token
report of the same model and code. Goal: time ratio <= 3 at the longest prompt, memory flat.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL = 3.0
SOURCES = ("argparse", "collections", "inspect", "typing")  # long, plain Python


def machine() -> str:
    """CPU model, cores, load average: what every timing here should be read against."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} logical cores, load average (1/5/15 min) {load}"


def gpt2_folder(tmp: Path) -> Path:
    """A GPT-2-shape model with 2,048 positions (random weights, seed 0; pycode's size and tokenizer)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from mechscope.zoo import WEIGHTS

    folder = tmp / "gpt2-2k"
    torch.manual_seed(0)
    config = GPT2Config(
        n_positions=2048, n_embd=256, n_layer=4, n_head=4, vocab_size=4096, bos_token_id=0, eos_token_id=0
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(WEIGHTS / "pycode" / name, folder / name)
    return folder


def prompts(model_name: str, lengths: list[int]) -> tuple[dict[int, str], int | None]:
    """{tokens: prompt text} cut from standard-library source, and the model's context."""
    import mechscope as ms

    model = ms.load(model_name)
    limit = model.context_length if hasattr(model, "context_length") else None
    text = "\n".join(inspect.getsource(__import__(name)) for name in SOURCES)
    ids = model.tokenizer(text)["input_ids"]
    out = {}
    for n in sorted({min(n, limit) if limit else n for n in lengths}):
        cut = n
        while True:  # decoding then encoding may merge tokens: cut until the count is n or just under
            prompt = model.tokenizer.decode(ids[:cut])
            if len(model.tokenize(prompt)["input_ids"][0]) <= n:
                break
            cut -= 1
        out[len(model.tokenize(prompt)["input_ids"][0])] = prompt
    return out, limit


PEAK_WRAPPER = """
import atexit, runpy, sys
sys.path.insert(0, {bench!r})
from _machine import peak_rss_mib
peak_file = sys.argv[1]
atexit.register(lambda: open(peak_file, "w").write(str(peak_rss_mib())))
sys.argv = ["mechscope", *sys.argv[2:]]
runpy.run_module("mechscope", run_name="__main__", alter_sys=True)
""".format(bench=str(Path(__file__).resolve().parent))
"""Runs the mechscope command line and writes its peak RSS (MiB) to argv[1] at exit."""


def time_report(model: str, prompt: str, out: Path, src: str | None, threads: int, timeout: float) -> dict:
    """Wall seconds and peak RSS (MiB) of one `mechscope report` in a fresh process."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "MPLBACKEND": "Agg",
    }
    if src:
        env["PYTHONPATH"] = src
    peak_file = out.parent / f".{out.name}.peak"
    cmd = [sys.executable, "-c", PEAK_WRAPPER, str(peak_file), "report", model, "--prompt", prompt, "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            return {"seconds": float("nan"), "peak_mib": float("nan"), "error": f"killed at {timeout:.0f} s"}
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().strip().splitlines()
    try:  # the child's own VmHWM: its ru_maxrss would include this bench's RSS, carried across exec
        peak = float(peak_file.read_text())
        peak_file.unlink()
    except (OSError, ValueError):
        peak = float("nan")
    result = {"seconds": seconds, "peak_mib": peak}
    if proc.returncode != 0:
        result["error"] = err[-1] if err else f"exit code {proc.returncode}"
    return result


def bench(model: str, label: str, args, tmp: Path) -> list[dict]:
    texts, limit = prompts(model, args.lengths)
    capped = [n for n in args.lengths if limit and n > limit]
    print(
        f"\n== {label}: reads {limit or 'any number of'} positions"
        + (f"; {', '.join(map(str, capped))} capped to {limit}" if capped else "")
    )
    codes = [("current", None)] + ([("--src", args.src)] if args.src else [])
    rows = []
    for round_ in range(args.rounds):
        for n, prompt in texts.items():  # interleaved: code versions side by side at each length
            for code, src in codes:
                res = time_report(model, prompt, tmp / f"out-{code}-{n}", src, args.threads, args.timeout)
                rows.append(
                    {"model": label, "tokens": n, "code": code, "round": round_, **res, "load_1min": os.getloadavg()[0]}
                )
                print(
                    f"   round {round_} {code:<8} {n:>5} tokens: {res['seconds']:7.1f} s"
                    f"  peak {res['peak_mib']:6.0f} MiB"
                    f"  load {rows[-1]['load_1min']:.2f}" + (f"  ERROR {res['error']}" if "error" in res else ""),
                    flush=True,
                )
    summarise(rows, texts)
    return rows


def summarise(rows: list[dict], texts: dict[int, str]) -> None:
    shortest = min(texts)
    print(f"   median over rounds; ratios to the {shortest}-token report of the same code")
    for code in dict.fromkeys(r["code"] for r in rows):

        def median(n, key):
            values = sorted(r[key] for r in rows if r["code"] == code and r["tokens"] == n)
            return values[len(values) // 2]

        base_s, base_m = median(shortest, "seconds"), median(shortest, "peak_mib")
        for n in texts:
            s, m = median(n, "seconds"), median(n, "peak_mib")
            if s != s:  # NaN: killed at --timeout
                print(f"   {code:<8} {n:>5} tokens: killed at the timeout  peak {m:6.0f} MiB when killed")
                continue
            verdict = "" if n == shortest else f"  goal <= {GOAL:g}x: {'ok' if s / base_s <= GOAL else 'MISSED'}"
            print(
                f"   {code:<8} {n:>5} tokens: {s:7.1f} s ({s / base_s:5.2f}x)  peak {m:6.0f} MiB "
                f"({m / base_m:4.2f}x){verdict}"
            )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Time and peak memory of `mechscope report` at several prompt lengths")
    p.add_argument(
        "--models", default="pycode,gpt2-2k", help="comma-separated: pycode, gpt2-2k, or model names/folders"
    )
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[128, 512, 2048])
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median reported)")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of each report process")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before a report is killed")
    p.add_argument("--src", help="also time the mechscope package found in this source folder (PYTHONPATH)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers

    import mechscope as ms

    print(
        f"mechscope {ms.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {sys.version.split()[0]}; {args.threads} thread(s) per report process"
    )
    print(f"machine: {machine()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mechscope-bench-report-") as tmp:
        for name in args.models.split(","):
            name = name.strip()
            model, label = {
                "pycode": ("zoo:pycode", "zoo:pycode (trained)"),
                "gpt2-2k": (None, "GPT-2 shape, 4 x 256, 2,048 positions, random weights"),
            }.get(name, (name, name))
            rows += bench(model or str(gpt2_folder(Path(tmp))), label, args, Path(tmp))
    print(f"\nmachine after: {machine()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
