"""GPU checks: the core's oracles on CUDA, recording overhead, SAE and tuned-lens training
(bf16 autocast, NCCL), in one short run for a lent GPU machine. Never part of the test suite.

    PYTHONPATH=src:. python3 bench/gpu_check.py --json $OUT/gpu.json      # on the GPU machine
    .venv/bin/python bench/gpu_check.py --device cpu --quick               # dry run here

Sections (each reports its numbers; a failing check prints FAIL and the run goes on):
  core     every tiny family + zoo:pycode (fp32 and bf16) on the device: logits unchanged by
           recording every site, resid_post == HF hidden_states, per-head results + bias ==
           hook_attn_out, self-patching leaves logits unchanged, gradients through an edit.
  hooks    forward time recording every resid_post / plain HF forward (gpt2-small shape,
           random weights, and zoo:pycode; fp32 and bf16), CUDA-synchronised medians.
  sae      TopK SAE on cached zoo:pycode activations: tokens/s with bf16 autocast and
           without, held-out FVU, executed FLOP/s / the device's dense matmul rate; resume
           after a stop equals the uninterrupted run.
  nccl     SAE and tuned-lens training under torchrun (1 process, NCCL) equal one process.
  lens     tuned-lens training steps/s on the device and its held-out KL vs the logit lens.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import mechscope as ms  # noqa: E402
from mechscope import edits  # noqa: E402

RESULTS: dict = {}
FAILS: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        FAILS.append(name)


def sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(fn, dev: str, repeats: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        sync(dev)
        t = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def stdlib_contexts(tokenizer, n_ctx: int, ctx: int) -> torch.Tensor:
    from mechscope.data import contexts, read_documents, token_stream

    stream, _ = token_stream(read_documents(Path(os.__file__).parent), tokenizer, max_tokens=n_ctx * ctx + 1)
    return contexts(stream, ctx)[:n_ctx]


# core


def core(dev: str, quick: bool) -> None:
    from tests.models.tiny import tiny_model

    families = ["gpt2", "neox", "llama", "mistral", "qwen2", "gemma2", "bert"] + ([] if quick else ["neox_seq", "toy"])
    models = [(f, tiny_model(f)) for f in families]
    models += [("pycode-fp32", ms.load("zoo:pycode")), ("pycode-bf16", ms.load("zoo:pycode", dtype=torch.bfloat16))]
    for name, model in models:
        model.hf.to(dev)
        bf16 = next(model.hf.parameters()).dtype == torch.bfloat16
        ids = torch.randint(1, min(97, model.hf.config.vocab_size), (2, 12), generator=torch.Generator().manual_seed(0))
        plain = model.run(ids).logits
        run = model.run(ids, record=[s.name for s in model.sites if "pattern" not in s.name])
        check(
            f"core/{name}: recording every site but patterns changes no logit",
            torch.equal(plain, run.logits),
            f"max diff {float((plain - run.logits).abs().max()):.2e}",
        )
        pat = model.run(ids, record="blocks.*.attn.hook_pattern")  # eager attention for the probabilities
        rows = max(float((p.float().sum(-1) - 1).abs().max()) for p in pat.cache.values())
        drift = float((pat.logits.float() - plain.float()).abs().max())
        check(
            f"core/{name}: pattern rows sum to 1; eager-attention logits near the fused ones",
            rows <= (1e-2 if bf16 else 1e-5) and drift <= (0.25 if bf16 else 1e-3),
            f"rows {rows:.1e}, logits {drift:.1e}",
        )
        with torch.no_grad():
            hs = model.hf(input_ids=ids.to(dev), output_hidden_states=True).hidden_states
        n = model.dims.n_layers
        worst = max(float((run.cache[f"blocks.{i}.hook_resid_post"] - hs[i + 1]).abs().max()) for i in range(n - 1))
        tol = 2e-2 if bf16 else 1e-5
        check(f"core/{name}: resid_post == HF hidden_states (layers 0..{n - 2})", worst <= tol, f"max {worst:.2e}")
        if "blocks.0.attn.hook_z" in run.cache and "blocks.0.hook_attn_out" in run.cache:
            per_head, bias = model.head_results(run.cache["blocks.0.attn.hook_z"], layer=0)
            attn_out = run.cache["blocks.0.hook_attn_out"].float()
            err = float((per_head.float().sum(-2) + bias.float() - attn_out).abs().max() / attn_out.abs().max())
            check(
                f"core/{name}: per-head results + bias == hook_attn_out",
                err <= (2e-2 if bf16 else 1e-5),
                f"max error / max |attn_out| {err:.2e}",
            )
        site = f"blocks.{n - 1}.hook_resid_pre"
        patched = model.run(ids, edits=[edits.replace(site, run.cache[site])]).logits
        check(
            f"core/{name}: self-patching is the identity",
            torch.equal(patched, plain),
            f"max diff {float((patched - plain).abs().max()):.2e}",
        )
        if not bf16:
            vec = torch.zeros(model.dims.d_model, device=dev, requires_grad=True)
            out = model.run(ids, edits=[edits.add("blocks.0.hook_resid_post", vec)], grad=True)
            out.logits[:, -1].logsumexp(-1).sum().backward()
            check(
                f"core/{name}: gradient through an edit",
                vec.grad is not None and bool(torch.isfinite(vec.grad).all()) and float(vec.grad.abs().sum()) > 0,
            )
        model.hf.to("cpu")


# hooks


def hooks(dev: str, quick: bool) -> None:
    import transformers as T

    out = {}
    torch.manual_seed(0)
    gpt2 = ms.Model(T.GPT2LMHeadModel(T.GPT2Config()), None, name="gpt2-small-shape")
    for label, model in (("gpt2-small", gpt2), ("pycode", ms.load("zoo:pycode"))):
        for dtype in (torch.float32, torch.bfloat16):
            model.hf.to(dev, dtype)
            batch, seq = (2, 32) if quick else (16, 512 if label == "gpt2-small" else 128)
            ids = torch.randint(0, model.hf.config.vocab_size, (batch, seq), device=dev)
            with torch.inference_mode():
                hf = median_time(lambda: model.hf(input_ids=ids, use_cache=False), dev, 5 if quick else 30)
                ones = torch.ones_like(ids)
                masked = median_time(
                    lambda: model.hf(input_ids=ids, attention_mask=ones, use_cache=False), dev, 5 if quick else 30
                )
                rec = median_time(lambda: model.run(ids, record="blocks.*.hook_resid_post"), dev, 5 if quick else 30)
            key = f"{label}/{str(dtype)[6:]}/{batch}x{seq}"
            out[key] = {"hf_ms": hf * 1e3, "hf_mask_ms": masked * 1e3, "ms_all_ms": rec * 1e3, "ratio": rec / hf}
            print(
                f"hooks {key}: HF {hf * 1e3:.2f} ms (with an all-ones mask {masked * 1e3:.2f}), recording every "
                f"resid_post {rec * 1e3:.2f} ms, ratio {rec / hf:.3f}",
                flush=True,
            )
        model.hf.to("cpu", torch.float32)
    RESULTS["hooks"] = out


# sae


def sae(dev: str, quick: bool, work: Path) -> None:
    from mechscope.dictionary import CoderConfig, TrainConfig, write_cache
    from mechscope.dictionary.cache import CacheReader
    from mechscope.dictionary.train import Trainer, fit_and_save

    model = ms.load("zoo:pycode", device=dev)
    ctx = stdlib_contexts(model.tokenizer, 64 if quick else 1024, 128)
    cache = write_cache(model, "blocks.2.hook_resid_post", ctx, work / "acts")
    width, k, batch = (1024, 16, 1024) if quick else (16384, 32, 8192)
    steps = 6 if quick else 60
    coder = CoderConfig("topk", model.dims.d_model, width, k=k)
    out = {}
    for autocast in (True, False):
        cfg = TrainConfig(
            total_tokens=steps * batch, batch_tokens=batch, warmup_steps=2, checkpoint_every=10**6, autocast=autocast
        )
        trainer = Trainer(CacheReader(cache, batch_tokens=batch, seed=0), [coder], cfg, device=dev)
        trainer.setup()
        batches = trainer.stream.batches(0)
        for _ in range(3):  # warm-up steps (kernels, allocator)
            trainer.step(next(batches)[0])
        sync(dev)
        t = time.perf_counter()
        for _ in range(steps - 3):
            trainer.step(next(batches)[0])
        sync(dev)
        secs = time.perf_counter() - t
        reader = CacheReader(cache, batch_tokens=batch, seed=0)
        held = reader.rows(torch.arange(reader.n_tokens - 4096, reader.n_tokens))
        x = held["blocks.2.hook_resid_post"].to(dev).float()
        c = trainer.coders[0].eval()
        with torch.no_grad():
            fvu = float((c.predict(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        rate = (steps - 3) * batch / secs
        flops = (steps - 3) * (2 * batch * model.dims.d_model * width + 8 * batch * k * model.dims.d_model) / secs
        out[f"autocast={autocast}"] = {"tokens_per_s": rate, "fvu_heldout": fvu, "flops": flops}
        print(
            f"sae autocast={autocast}: {rate:,.0f} tokens/s, FVU {fvu:.3f} after {steps} steps, "
            f"{flops / 1e12:.1f} TFLOP/s executed",
            flush=True,
        )
    a = torch.randn(batch, model.dims.d_model, device=dev)
    w = torch.randn(model.dims.d_model, width, device=dev)
    for dt in (torch.float32, torch.bfloat16):
        aa, ww = a.to(dt), w.to(dt)
        o = torch.empty(batch, width, device=dev, dtype=dt)
        secs = median_time(lambda: torch.mm(aa, ww, out=o), dev, 10)
        out[f"matmul_{str(dt)[6:]}"] = 2 * batch * model.dims.d_model * width / secs
        print(
            f"dense matmul {str(dt)[6:]} [{batch}x{model.dims.d_model}]x[{model.dims.d_model}x{width}]: "
            f"{out[f'matmul_{str(dt)[6:]}'] / 1e12:.1f} TFLOP/s",
            flush=True,
        )
    for autocast, mm in ((True, "matmul_bfloat16"), (False, "matmul_float32")):
        r = out[f"autocast={autocast}"]["flops"] / out[mm]
        print(f"sae autocast={autocast}: executed FLOP/s / {mm} = {r:.2f}", flush=True)
    cfg = TrainConfig(total_tokens=12 * 1024, batch_tokens=1024, warmup_steps=2, checkpoint_every=4)
    small = CoderConfig("topk", model.dims.d_model, 1024, k=16)
    straight = fit_and_save(
        Trainer(CacheReader(cache, batch_tokens=1024, seed=0), [small], cfg, device=dev), None, progress=False
    )[0]
    fit_and_save(
        Trainer(CacheReader(cache, batch_tokens=1024, seed=0), [small], cfg, device=dev),
        work / "r",
        progress=False,
        stop_after=6,
    )
    resumed = fit_and_save(
        Trainer(CacheReader(cache, batch_tokens=1024, seed=0), [small], cfg, device=dev), work / "r", progress=False
    )[0]
    diff = max(
        float((a - b).abs().max()) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values())
    )
    check("sae: resume after a stop equals the uninterrupted run on the device", diff <= 1e-5, f"max diff {diff:.2e}")
    out["resume_max_diff"] = diff
    RESULTS["sae"] = out


# nccl (torchrun, one process) and tuned lens

WORKER = """
import sys, torch
sys.path[:0] = [{src!r}, {root!r}]
import mechscope as ms
from mechscope.dictionary import CoderConfig, TrainConfig
from mechscope.dictionary.cache import CacheReader
from mechscope.dictionary.train import Trainer, fit_and_save
from mechscope.distributed import init_distributed
from mechscope.lens.tuned import TunedLensConfig, train
import torch.distributed as dist
rank, world = init_distributed()
# one GPU: WORLD_SIZE 1 joins no group (NCCL refuses two ranks on one device), so this runs the
# torchrun entry path only; the multi-rank path needs a machine with several GPUs
print("backend", dist.get_backend() if dist.is_initialized() else "none", "world", world)
cfg = TrainConfig(total_tokens=8 * 1024, batch_tokens=1024, warmup_steps=2, checkpoint_every=10**6)
reader = CacheReader({cache!r}, batch_tokens=1024, seed=0)
c = fit_and_save(Trainer(reader, [CoderConfig("topk", 256, 1024, k=16)], cfg), None, progress=False)[0]
c.save({out!r} + "/sae")
model = ms.load("zoo:pycode", device="cuda")
ids = torch.load({ids!r})
lens = train(model, ids, TunedLensConfig(steps=10, batch_size=4), progress=False)
lens.save({out!r} + "/lens")
dist.destroy_process_group()
"""


def nccl_and_lens(dev: str, quick: bool, work: Path) -> None:
    from mechscope.dictionary import CoderConfig, TrainConfig
    from mechscope.dictionary.cache import CacheReader
    from mechscope.dictionary.train import Trainer, fit_and_save
    from mechscope.lens.tuned import TunedLens, TunedLensConfig, evaluate, train

    model = ms.load("zoo:pycode", device=dev)
    ids = stdlib_contexts(model.tokenizer, 96, 128)
    torch.save(ids[:64], work / "ids.pt")
    if dev.startswith("cuda"):
        (work / "worker.py").write_text(
            WORKER.format(
                src=str(ROOT / "src"),
                root=str(ROOT),
                cache=str(work / "acts"),
                out=str(work / "ddp"),
                ids=str(work / "ids.pt"),
            )
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "1",
                str(work / "worker.py"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        print(done.stdout[-500:], done.stderr[-2000:] if done.returncode else "", flush=True)
        check("nccl: SAE + tuned lens run under torchrun", done.returncode == 0)
        if done.returncode == 0 and torch.cuda.device_count() > 1:
            print("several GPUs: rerun the worker with --nproc_per_node", torch.cuda.device_count(), "to test NCCL")
        if done.returncode == 0:
            cfg = TrainConfig(total_tokens=8 * 1024, batch_tokens=1024, warmup_steps=2, checkpoint_every=10**6)
            one = fit_and_save(
                Trainer(
                    CacheReader(work / "acts", batch_tokens=1024, seed=0),
                    [CoderConfig("topk", 256, 1024, k=16)],
                    cfg,
                    device=dev,
                ),
                None,
                progress=False,
            )[0]
            ddp = ms.dictionary.load(work / "ddp" / "sae", device=dev)
            diff = max(float((a - b).abs().max()) for a, b in zip(one.state_dict().values(), ddp.state_dict().values()))
            check("nccl: SAE under torchrun equals one process", diff <= 1e-4, f"max diff {diff:.2e}")
            lens_one = train(model, ids[:64], TunedLensConfig(steps=10, batch_size=4), progress=False)
            lens_ddp = TunedLens.load(work / "ddp" / "lens", model)
            diff = float((lens_one.weight.to(dev) - lens_ddp.weight.to(dev)).abs().max())
            check("nccl: tuned lens under torchrun equals one process", diff <= 1e-4, f"max diff {diff:.2e}")
    steps = 4 if quick else 200
    t = time.perf_counter()
    lens = train(model, ids[:64], TunedLensConfig(steps=steps, batch_size=8), progress=False)
    sync(dev)
    secs = time.perf_counter() - t
    ev = evaluate(model, lens, ids[64:])
    rows = ev.rows()
    print(
        f"lens: {steps} steps in {secs:.1f} s ({steps * 8 * 128 / secs:,.0f} tokens/s); held-out KL per stream:",
        [(r["layer"], round(r["tuned_kl"], 3), round(r["logit_kl"], 3)) for r in rows],
        flush=True,
    )
    RESULTS["lens"] = {"steps": steps, "seconds": secs, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a dry run of the script")
    p.add_argument("--only", default="core,hooks,sae,nccl")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    from _machine import machine_info, machine_line

    RESULTS["machine"] = machine_info()
    print(machine_line(RESULTS["machine"]), flush=True)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        print(torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.only.split(","):
            t = time.perf_counter()
            try:
                {
                    "core": lambda: core(args.device, args.quick),
                    "hooks": lambda: hooks(args.device, args.quick),
                    "sae": lambda: sae(args.device, args.quick, work),
                    "nccl": lambda: nccl_and_lens(args.device, args.quick, work),
                }[name]()
            except Exception:
                traceback.print_exc()
                check(f"{name}: section ran", False)
            print(f"-- {name}: {time.perf_counter() - t:.1f} s", flush=True)
    RESULTS["fails"] = FAILS
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=1, default=str))
    print("FAILED:" if FAILS else "all checks passed", *FAILS)


if __name__ == "__main__":
    main()
