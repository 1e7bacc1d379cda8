"""Benchmark: the feature store's build throughput against the unavoidable compute, its peak
memory at two corpus lengths, and the dashboard's latency under concurrent clients.

    .venv/bin/python bench/features.py                       # short settings
    .venv/bin/python bench/features.py --tokens 65536 --clients 8 --requests 40

1. Build throughput (tokens/s) on zoo:pycode with random TopK SAEs (k=32) of 4096 and 16384
   latents at blocks.2.hook_resid_post, as a fraction of the model forward + encode alone over
   the same batches, measured side by side in this process (goal >= 0.7). Shown for the
   streaming pass alone and for the whole build (with the final write of the store).
2. Peak memory (max RSS of a fresh process) of builds over two corpus lengths (goal: flat).
3. Dashboard latency p50/p95 with concurrent clients on 127.0.0.1 over the 16384-latent store:
   feature pages (HTML, random latents; goal p95 < 100 ms) and the prompt page's analysis of a
   64-token prompt (goal p95 < 300 ms), each request a prompt the server has not seen (its
   cache of analysed prompts never answers); a repeated prompt (the cache answers) apart.

    .venv/bin/python bench/features.py --store STORE            # latency only, on a built store
    .venv/bin/python bench/features.py --store STORE --nodelay  # with TCP_NODELAY on the server socket

`--nodelay` sets TCP_NODELAY on the listening socket `server.core.bind_socket` makes (accepted
sockets inherit it): core creates it without IPPROTO_TCP, so asyncio leaves Nagle's algorithm on
and every response waits ~40 ms for the client's delayed ACK. It shows what that fix gives.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from _machine import load_line, machine_line

import mechscope as ms
from mechscope import features
from mechscope.data import stdlib_documents
from mechscope.dictionary import CoderConfig
from mechscope.dictionary import build as build_coder

SITE = "blocks.2.hook_resid_post"
BENCH = Path(__file__).resolve().parent


def coder(d_sae: int):
    torch.manual_seed(0)
    return build_coder(CoderConfig("topk", 256, d_sae, k=32, hook_name=SITE)).eval()


def baseline(model, sae, docs, cfg, tokens: int) -> float:
    """Seconds for forward + encode alone over the same batches the build reads."""
    from mechscope.features import corpus

    reader = features.LatentReader({"": model}, sae)
    start = time.perf_counter()
    for batch in corpus.batches(corpus.contexts(docs, model.tokenizer, cfg.ctx_len, tokens), cfg.batch_size):
        reader(batch)
    return time.perf_counter() - start


def timed_build(model, sae, docs, cfg, tokens: int, out: Path) -> tuple[float, float]:
    """(seconds of the whole build, seconds of its final write) for a fresh store."""
    build_mod = importlib.import_module("mechscope.features.build")
    original, spent = build_mod.finalize, [0.0]

    def finalize(*args):
        t = time.perf_counter()
        original(*args)
        spent[0] += time.perf_counter() - t

    build_mod.finalize = finalize
    try:
        start = time.perf_counter()
        features.build(model, sae, docs, out, tokens=tokens, cfg=cfg)
        return time.perf_counter() - start, spent[0]
    finally:
        build_mod.finalize = original


def throughput(model, docs, args, folder: Path) -> dict:
    cfg = features.BuildConfig(ctx_len=64, batch_size=args.batch_size)
    rows = {}
    for d_sae in (4096, 16384):
        sae = coder(d_sae)
        baseline(model, sae, docs, cfg, cfg.ctx_len * cfg.batch_size)  # warm-up
        base = baseline(model, sae, docs, cfg, args.tokens)
        sae.save(folder / f"sae-{d_sae}")  # built from the folder: the prompt page reads it from there
        total, final = timed_build(model, folder / f"sae-{d_sae}", docs, cfg, args.tokens, folder / f"store-{d_sae}")
        stream = total - final
        rows[d_sae] = {
            "baseline_tok_s": args.tokens / base,
            "stream_tok_s": args.tokens / stream,
            "build_tok_s": args.tokens / total,
            "stream_ratio": base / stream,
            "build_ratio": base / total,
        }
        r = rows[d_sae]
        print(
            f"{d_sae:6d} latents: forward+encode {r['baseline_tok_s']:8.0f} tok/s | streaming pass "
            f"{r['stream_tok_s']:8.0f} tok/s = {r['stream_ratio']:.2f}x | whole build (with the final write, "
            f"{final:.1f} s) {r['build_tok_s']:8.0f} tok/s = {r['build_ratio']:.2f}x",
            flush=True,
        )
    return rows


MEMORY_SCRIPT = """
import sys, tempfile, torch
sys.path.insert(0, sys.argv[3])
from _machine import peak_rss_mib
import mechscope as ms
from mechscope import features
from mechscope.data import stdlib_documents
from features import coder
torch.set_num_threads(1)
model = ms.load("zoo:pycode")
docs = stdlib_documents(int(sys.argv[2]))
sae = coder(4096)
features.build(model, sae, docs, tempfile.mkdtemp() + "/s", tokens=int(sys.argv[1]),
               cfg=features.BuildConfig(ctx_len=64, batch_size=16))
print(peak_rss_mib())  # VmHWM: ru_maxrss would carry this bench's own RSS across exec
"""


def memory(args) -> dict:
    out = {}
    for tokens in (args.tokens // 4, args.tokens):
        proc = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, str(tokens), str(args.files), str(BENCH)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[tokens] = float(proc.stdout.strip().splitlines()[-1])
        print(f"peak RSS of a build over {tokens:7d} tokens (4096 latents): {out[tokens]:7.0f} MiB", flush=True)
    return out


def _clients(n: int, requests: int, call) -> list[float]:
    times: list[float] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(requests):
            t = time.perf_counter()
            call(rng)
            with lock:
                times.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(times)


def prompts(model, docs, n: int, length: int = 64) -> list[str]:
    """`n` different prompts of `length` tokens (windows of the corpus), so that the server's
    cache of analysed prompts never answers: every request pays for its forward pass."""
    ids = [t for doc in docs for t in model.tokenizer(doc, add_special_tokens=False)["input_ids"]]
    out: list[str] = []
    for start in range(0, len(ids) - length, length):
        text = model.tokenizer.decode(ids[start : start + length])
        if len(model.tokenizer(text, add_special_tokens=False)["input_ids"]) == length:  # round-trips
            out.append(text)
        if len(out) == n:
            break
    return out


def nodelay() -> None:
    """TCP_NODELAY on the server's listening socket (see the module docstring)."""
    import socket

    from mechscope.server import core

    original = core.bind_socket

    def bind_socket(host: str, port: int) -> socket.socket:
        sock = original(host, port)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    core.bind_socket = bind_socket


def latency(model, docs, store: Path, args) -> dict:
    import httpx

    from mechscope.server.core import Running
    from mechscope.server.dashboard import dashboard_app

    if args.nodelay:
        nodelay()
    print(f"server socket: {'TCP_NODELAY set' if args.nodelay else 'as server.core makes it'}", flush=True)

    texts = prompts(model, docs, 1 + args.requests * (1 + args.clients))
    fresh = iter(texts[1:])
    out = {}
    print(load_line(), flush=True)
    with Running(dashboard_app([store], model=model)) as server, httpx.Client(timeout=60) as http:
        name = store.name

        def feature(rng):
            assert http.get(f"{server.url}/feature/{name}/{rng.randrange(16384)}").status_code == 200

        def analyse(rng):  # a prompt never sent before (next() on a shared iterator is atomic under the GIL)
            assert http.post(f"{server.url}/api/prompt", json={"prompt": next(fresh)}).status_code == 200

        def repeated(rng):  # the same prompt again: the server's cache of analysed prompts answers
            assert http.post(f"{server.url}/api/prompt", json={"prompt": texts[0]}).status_code == 200

        cases = (
            ("feature page", feature, args.requests),
            ("prompt page (64 tokens, new prompts)", analyse, args.requests // 4),
            ("prompt page (64 tokens, repeated prompt)", repeated, args.requests // 4),
        )
        for label, call, n in cases:
            call(random.Random(0))
            for clients in dict.fromkeys((1, args.clients)):  # 1 client: the service time itself
                t = _clients(clients, max(2, n), call)
                p50, p95 = statistics.median(t) * 1e3, t[int(0.95 * (len(t) - 1))] * 1e3
                out[f"{label}, {clients} clients"] = {"p50_ms": p50, "p95_ms": p95, "n": len(t)}
                print(
                    f"{label}: {clients} concurrent client(s), {len(t)} requests: p50 {p50:.0f} ms, p95 {p95:.0f} ms",
                    flush=True,
                )
    print(load_line(), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384, help="corpus tokens per build")
    parser.add_argument("--files", type=int, default=40, help="stdlib files read as the corpus")
    parser.add_argument("--batch-size", type=int, default=16, help="contexts (of 64 tokens) per batch")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients for the latency test")
    parser.add_argument("--requests", type=int, default=40, help="feature-page requests per client")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--store", type=Path, help="latency only, on this built 16384-latent pycode store")
    parser.add_argument("--nodelay", action="store_true", help="TCP_NODELAY on the server socket (see above)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(), flush=True)
    model = ms.load("zoo:pycode")
    docs = stdlib_documents(args.files)
    if args.store is not None:
        print(json.dumps({"latency": latency(model, docs, args.store, args)}, indent=1))
        return
    folder = Path(tempfile.mkdtemp())
    report = {"throughput": throughput(model, docs, args, folder)}
    report["memory_mib"] = memory(args)
    report["latency"] = latency(model, docs, folder / "store-16384", args)
    print(load_line())
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
