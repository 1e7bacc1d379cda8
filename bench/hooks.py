"""Benchmark: the cost of recording residual streams with mechscope, side by side in one run.

    .venv/bin/python bench/hooks.py                  # gpt2-small shape, and zoo:pycode when trained
    .venv/bin/python bench/hooks.py --models gpt2 --repeats 30 --threads 1

For each model (same weights, same input ids for everyone) it times, interleaved and
with medians over repeats:
  hf        plain Hugging Face forward (use_cache=False)
  ms_all    mechscope recording every blocks.*.hook_resid_post (with logits)
  ms_early  mechscope recording only the middle layer's resid_post with logits=False
and, in a subprocess running the peers' own venv (bench/.peers, see bench/README.md):
  TransformerLens HookedTransformer run_with_cache (names_filter = the same residuals;
    stop_at_layer for early), and the same through TL's TransformerBridge (wraps the HF model)
  nnsight trace saving the same block outputs (tracer.stop() for early)
  plain HF again, so that each process has its own baseline.
Goals: ms_all / hf <= 1.05; ms_all faster than both peers (ratio < 1).
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
from pathlib import Path

import torch
from _machine import load_line, machine_info, machine_line
from safetensors.torch import save_file

import mechscope as ms

BENCH = Path(__file__).resolve().parent
PEERS_PYTHON = BENCH / ".peers" / "bin" / "python"
LOCAL = ("hf", "ms_all", "ms_early", "ms_uncached")
PEER = ("peer_hf", "tl_all", "tl_early", "tlb_all", "tlb_early", "nn_all", "nn_early")
LABELS = {
    "hf": "HF plain forward",
    "ms_all": "mechscope, all resid_post",
    "ms_early": "mechscope, mid resid_post, logits=False",
    "ms_uncached": "mechscope, all resid_post, plan cache off",
    "peer_hf": "HF plain forward (peer process)",
    "tl_all": "TransformerLens run_with_cache, all resid_post",
    "tl_early": "TransformerLens, mid resid_post, stop_at_layer",
    "tlb_all": "TL TransformerBridge run_with_cache, all resid_post",
    "tlb_early": "TL TransformerBridge, mid resid_post, stop_at_layer",
    "nn_all": "nnsight trace, all block outputs .save()",
    "nn_early": "nnsight trace, mid block output, tracer.stop()",
}


def word_tokenizer(vocab_size: int):
    """A trivial fast tokenizer ("t0" ... "tN"): nnsight wants one; the bench feeds ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t0", unk_token="t0", pad_token="t0")


def _qwen3():
    from transformers import Qwen3Config

    shape = dict(
        num_hidden_layers=8,
        hidden_size=512,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        intermediate_size=1536,
        vocab_size=32000,
    )
    return Qwen3Config(**shape), "Qwen3 shape (8 layers, d 512, 8/4 heads, q/k norms; random init, seed 0)"


def _mixtral():
    from transformers import MixtralConfig

    shape = dict(
        num_hidden_layers=4,
        hidden_size=512,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1024,
        num_local_experts=8,
        num_experts_per_tok=2,
        vocab_size=32000,
    )
    return MixtralConfig(**shape), "Mixtral shape (4 layers, d 512, 8 experts top-2; random init, seed 0)"


SHAPES = {"qwen3": _qwen3, "mixtral": _mixtral}
"""Architectures without a hand-written TransformerLens config here: timed against plain HF and nnsight."""


def prepare(name: str, tmp: Path) -> tuple[Path, str] | None:
    """The Hugging Face folder of model `name` (built with a fixed seed) and a description."""
    if name == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        hf = GPT2LMHeadModel(GPT2Config())  # GPT-2 small shape, random init
        folder = tmp / "gpt2"
        hf.save_pretrained(folder)
        word_tokenizer(hf.config.vocab_size).save_pretrained(folder)
        return folder, "GPT-2 small shape (GPT2Config() defaults, random init, seed 0)"
    if name == "toy":
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=1000, n_positions=128))
        folder = tmp / "toy"
        hf.save_pretrained(folder)
        word_tokenizer(hf.config.vocab_size).save_pretrained(folder)
        return folder, "2-layer GPT-2 toy (d_model 128, 4 heads, vocab 1000, random init): per-call overhead"
    if name in SHAPES:
        from transformers import AutoModelForCausalLM

        config, description = SHAPES[name]()
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(config)
        folder = tmp / name
        hf.save_pretrained(folder)
        word_tokenizer(config.vocab_size).save_pretrained(folder)
        return folder, description
    if name == "pycode":
        from mechscope.zoo import WEIGHTS

        folder = WEIGHTS / "pycode"
        if not (folder / "card.json").is_file():
            print(f"[pycode] skipped: no trained zoo:pycode in {folder} (run `mechscope zoo train pycode`)")
            return None
        return folder, "zoo:pycode (Llama architecture, trained)"
    if (Path(name) / "config.json").is_file():
        return Path(name), f"Hugging Face folder {name}"
    raise SystemExit(f"unknown model {name!r}: choose from gpt2, toy, pycode, qwen3, mixtral or a Hugging Face folder")


class Peers:
    """The peer subprocess: one JSON line per request on its stdout."""

    def __init__(self, python: Path, folder: Path, ids_file: Path, layer: int, threads: int):
        cmd = [
            str(python),
            str(BENCH / "_peers.py"),
            str(folder),
            str(ids_file),
            "--layer",
            str(layer),
            "--threads",
            str(threads),
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # everything is local; never reach for the hub
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the peer process exited (code {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def time(self, variant: str, inner: int) -> float:
        self.proc.stdin.write(f"{variant.removeprefix('peer_')} {inner}\n")
        self.proc.stdin.flush()
        return self._read()["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def check_mechscope(model: ms.Model, hf, ids: torch.Tensor, mid: int) -> dict:
    """mechscope's records against HF's own hidden_states (a benchmark of wrong numbers is worthless)."""
    n = hf.config.num_hidden_layers
    ref = hf(input_ids=ids, use_cache=False, output_hidden_states=True)
    run = model.run(ids, record="blocks.*.hook_resid_post")
    early = model.run(ids, record=f"blocks.{mid}.hook_resid_post", logits=False)
    return {
        "ms_logits_maxdiff": (run.logits - ref.logits).abs().max().item(),
        "ms_resid_maxdiff": max(
            (run.cache[f"blocks.{i}.hook_resid_post"] - ref.hidden_states[i + 1]).abs().max().item()
            for i in range(n - 1)
        ),
        "ms_early_maxdiff": (early.cache[f"blocks.{mid}.hook_resid_post"] - ref.hidden_states[mid + 1])
        .abs()
        .max()
        .item(),
        "ms_early_logits_is_none": early.logits is None,
    }


def _uncached(fn):
    """`fn()` with the per-signature plan cache (mechscope.plan_cache) switched off."""
    from mechscope import plan_cache

    plan_cache.ENABLED = False
    try:
        return fn()
    finally:
        plan_cache.ENABLED = True


def bench_model(name: str, args, tmp: Path) -> dict | None:
    from transformers import AutoModelForCausalLM

    prepared = prepare(name, tmp)
    if prepared is None:
        return None
    folder, description = prepared
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model = ms.Model(hf, None, name=name)
    n_layers = hf.config.num_hidden_layers
    # a middle block, never the last: HF's last hidden state has the final norm applied, so
    # the early variants' check against it would compare different things (2-layer toy: block 0)
    mid = (n_layers - 1) // 2
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, hf.config.vocab_size, (args.batch, args.seq), generator=gen)
    mask = torch.ones_like(ids)
    ids_file = tmp / f"{name}_ids.safetensors"
    save_file({"input_ids": ids}, str(ids_file))

    local = {
        "hf": lambda: hf(input_ids=ids, attention_mask=mask, use_cache=False).logits,
        "ms_all": lambda: model.run(ids, record="blocks.*.hook_resid_post"),
        "ms_early": lambda: model.run(ids, record=f"blocks.{mid}.hook_resid_post", logits=False),
        "ms_uncached": lambda: _uncached(lambda: model.run(ids, record="blocks.*.hook_resid_post")),
    }

    def time_local(variant: str, inner: int) -> float:
        fn = local[variant]
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            return (time.perf_counter() - start) / inner

    with torch.inference_mode():
        checks = check_mechscope(model, hf, ids, mid)
    peers, info = None, {}
    if args.peers and PEERS_PYTHON.exists():
        print(f"[{name}] starting the peer process ({PEERS_PYTHON}) ...", flush=True)
        try:
            peers = Peers(PEERS_PYTHON, folder, ids_file, mid, args.threads)
            info = peers.info
            checks.update(info["checks"])
        except (RuntimeError, ValueError) as err:
            print(f"[{name}] peers skipped: {err}")
    elif args.peers:
        print(f"[{name}] peers skipped: {PEERS_PYTHON} is missing; create it as bench/README.md says")
    offered = {f"peer_{v}" if v == "hf" else v for v in info.get("variants", ())}  # nnsight only: no TL config
    variants = list(LOCAL) + ([v for v in PEER if v in offered] if peers else [])

    def measure(variant: str, inner: int) -> float:
        return peers.time(variant, inner) if variant in PEER else time_local(variant, inner)

    try:
        for variant in variants:  # warm-up
            for _ in range(args.warmup):
                measure(variant, 1)
        # each sample lasts about --sample-seconds so that fast models are not all timer noise
        inner = max(1, round(args.sample_seconds / measure("hf", 1)))
        samples: dict[str, list[float]] = {v: [] for v in variants}
        print(f"[{name}] timing {len(variants)} variants x {args.repeats} repeats x {inner} forwards ...", flush=True)
        for r in range(args.repeats):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]  # rotate: no fixed neighbour
            for variant in order:
                samples[variant].append(measure(variant, inner))
    finally:
        if peers:
            peers.close()
    med = {v: statistics.median(s) for v, s in samples.items()}
    spread = {v: (min(s), max(s)) for v, s in samples.items()}
    return {
        "model": name,
        "description": description,
        "layers": n_layers,
        "mid": mid,
        "inner": inner,
        "attn": hf.config._attn_implementation,
        "median_s": med,
        "min_max_s": spread,
        "checks": checks,
        "peer_versions": info.get("versions"),
        "peer_attn": info.get("attn"),
        "bridge_attn": info.get("bridge_attn"),
    }


def ratio_lines(res: dict) -> list[str]:
    m = res["median_s"]
    lines = [
        f"     mechscope all ÷ {'HF plain':<16} {m['ms_all'] / m['hf']:.3f}   goal <= 1.05  "
        f"{'ok' if m['ms_all'] / m['hf'] <= 1.05 else 'MISSED'}",
        f"     mechscope early (L{res['mid']}, logits=False) ÷ HF plain full forward: {m['ms_early'] / m['hf']:.3f}",
        f"     mechscope all, plan cache on ÷ off: {m['ms_all'] / m['ms_uncached']:.3f}",
    ]
    if "peer_hf" in m:
        for peer, label in (("tl", "TransformerLens"), ("tlb", "TL bridge"), ("nn", "nnsight")):
            if f"{peer}_all" not in m:
                continue
            direct = m["ms_all"] / m[f"{peer}_all"]
            # normalised: each side divided by its own process's HF baseline
            norm = (m["ms_all"] / m["hf"]) / (m[f"{peer}_all"] / m["peer_hf"])
            early = (m["ms_early"] / m["hf"]) / (m[f"{peer}_early"] / m["peer_hf"])
            lines.append(
                f"     mechscope all ÷ {label:<16} {direct:.3f}   (HF-normalised {norm:.3f})   goal < 1  "
                f"{'ok' if direct < 1 else 'MISSED'};   early ÷ early, HF-normalised: {early:.3f}"
            )
    return lines


def report(res: dict, args) -> None:
    print(f"\n== {res['model']}: {res['description']}")
    print(
        f"   {res['layers']} layers, batch {args.batch} x {args.seq} tokens, float32, torch threads {args.threads}, "
        f"attention {res['attn']}; median of {args.repeats} interleaved samples x {res['inner']} forwards"
    )
    print(f"   {'variant':<50} {'ms/forward':>10} {'÷ HF':>7} {'min':>8} {'max':>8}")
    for variant, seconds in res["median_s"].items():
        base = res["median_s"]["peer_hf" if variant in PEER else "hf"]
        lo, hi = res["min_max_s"][variant]
        print(
            f"   {LABELS[variant]:<50} {seconds * 1e3:>10.1f} {seconds / base:>7.3f} {lo * 1e3:>8.1f} {hi * 1e3:>8.1f}"
        )
    print("   ratios:")
    print("\n".join(ratio_lines(res)))
    checks = ", ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in res["checks"].items())
    print(f"   checks against HF: {checks}")
    if res["peer_versions"]:
        print(
            f"   peers: {', '.join(f'{k} {v}' for k, v in res['peer_versions'].items())} "
            f" (attention: peer HF and nnsight {res['peer_attn']}, TL bridge {res['bridge_attn']})"
        )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Recording overhead of mechscope vs plain HF, TransformerLens, nnsight")
    p.add_argument(
        "--models",
        default="gpt2,pycode",
        help="comma-separated: gpt2, toy (2 layers; use --batch 1 --seq 16), pycode, qwen3, mixtral, or HF folders",
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=15, help="interleaved samples per variant (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sample-seconds", type=float, default=0.25, help="rough length of one sample")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads, same in both processes")
    p.add_argument("--no-peers", dest="peers", action="store_false", help="time mechscope and HF only")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    print(
        f"mechscope {ms.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"python {sys.version.split()[0]}"
    )
    machine = machine_info()
    print(machine_line(machine))
    results = []
    with tempfile.TemporaryDirectory(prefix="mechscope-bench-") as tmp:
        for name in args.models.split(","):
            res = bench_model(name.strip(), args, Path(tmp))
            if res:
                report(res, args)
                results.append(res)
    if not PEERS_PYTHON.exists() and args.peers:
        print(
            f"\nTo compare with TransformerLens and nnsight, create {PEERS_PYTHON.parent.parent} "
            "as bench/README.md says."
        )
    print(load_line())
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine, "load_average_end": os.getloadavg(), "models": results}, indent=2)
        )


if __name__ == "__main__":
    main()
