"""Benchmark: steering, side by side in one process (medians over interleaved repeats).

    .venv/bin/python bench/steering.py                       # all three parts, short settings
    .venv/bin/python bench/steering.py --parts a --repeats 5 --tokens 64

(a) steered greedy generation (mechscope.steering.generate, a vector at one
    resid_post, where="all") / plain HF `generate` on the same ids, on zoo:pycode and a
    GPT-2-small-shape model (random init, word tokenizer). Goal <= 1.05.
(b) the layer x strength search on zoo:pycode with >= 20 strengths: cells per second with
    all strengths of a layer in one forward / one cell per forward. Goal >= 5x.
(c) vector extraction tokens per second, mechscope `contrast` / steering-vectors'
    `train_steering_vector` (same pairs, same batch size, decoder-block layer 2). Goal >= 1x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_line, machine_line  # noqa: E402

import mechscope as ms  # noqa: E402
from mechscope import steering  # noqa: E402

CODE = [
    ("def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b"),
    ("total = total + x", "total = total - x"),
    ("x = y + 1", "x = y - 1"),
    ("count += 1", "count -= 1"),
    ("return n + m", "return n - m"),
    ("i = i + step", "i = i - step"),
    ("s = s + item.value", "s = s - item.value"),
    ("result = left + right", "result = left - right"),
]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds per callable, run in turn `repeats` times after one warm-up each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def gpt2_small_shape() -> ms.Model:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    vocab = 50257
    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="t0", unk_token="t0", pad_token="t0")
    return ms.Model(GPT2LMHeadModel(GPT2Config(vocab_size=vocab)), fast, name="gpt2-small shape (random)")


def part_a(repeats: int, tokens: int) -> None:
    print(f"(a) steered generation / plain HF generate ({tokens} new tokens, greedy, batch 1)")
    for model, prompt in ((ms.load("zoo:pycode"), "def parse(line):\n    "), (gpt2_small_shape(), None)):
        prompt = prompt or " ".join(f"t{i * 37 % 5000}" for i in range(24))
        layer = model.dims.n_layers // 2
        site = f"blocks.{layer}.hook_resid_post"
        vector = steering.SteeringVector({site: torch.randn(model.dims.d_model) * 0.1})
        enc = model.tokenize(prompt)
        hf_kwargs = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)

        def hf():
            with torch.no_grad():
                model.hf.generate(**enc, **hf_kwargs)

        def steered(where):
            return lambda: steering.generate(
                model, prompt, (vector, 1.0, where), max_new_tokens=tokens, min_new_tokens=tokens
            )

        t = interleaved({"hf": hf, "all": steered("all"), "generated": steered("generated")}, repeats)
        print(
            f"    {model.name}: HF {t['hf'] * 1e3:.1f} ms, steered all {t['all'] * 1e3:.1f} ms "
            f"({t['all'] / t['hf']:.3f}x), where=generated {t['generated'] * 1e3:.1f} ms "
            f"({t['generated'] / t['hf']:.3f}x)"
        )


def part_b(repeats: int, n_strengths: int) -> None:
    model = ms.load("zoo:pycode")
    vector = steering.contrast(model, CODE[:6], "blocks.*.hook_resid_post", progress=False)
    grid = [float(s) for s in torch.linspace(-2, 2, n_strengths)]
    cells = model.dims.n_layers * len(grid)

    def run(per):
        return lambda: steering.search(
            model, vector, heldout=CODE[6:], strengths=grid, cells_per_forward=per, progress=False
        )

    t = interleaved({"batched": run(None), "single": run(1)}, repeats)
    print(
        f"(b) search on zoo:pycode, {model.dims.n_layers} layers x {len(grid)} strengths, "
        f"{len(CODE) - 6} held-out pairs: "
        f"batched {cells / t['batched']:.1f} cells/s, one cell per forward {cells / t['single']:.1f} cells/s "
        f"-> {t['single'] / t['batched']:.2f}x"
    )


def part_c(repeats: int, copies: int) -> None:
    from steering_vectors import train_steering_vector

    model = ms.load("zoo:pycode")
    pairs = CODE * copies
    n_tokens = sum(len(model.tokenizer(p)["input_ids"]) + len(model.tokenizer(n)["input_ids"]) for p, n in pairs)
    batch = 16

    def ours():
        steering.contrast(model, pairs, "blocks.2.hook_resid_post", batch_size=batch, progress=False)

    def theirs():
        train_steering_vector(model.hf, model.tokenizer, pairs, layers=[2], batch_size=batch)

    t = interleaved({"mechscope": ours, "steering-vectors": theirs}, repeats)
    print(
        f"(c) vector extraction, {len(pairs)} pairs ({n_tokens} tokens), batch {batch}: mechscope "
        f"{n_tokens / t['mechscope']:.0f} tok/s, steering-vectors {n_tokens / t['steering-vectors']:.0f} tok/s "
        f"-> {t['steering-vectors'] / t['mechscope']:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="abc", help="which parts to run: any of a, b, c")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32, help="(a) new tokens per generation")
    parser.add_argument("--strengths", type=int, default=20, help="(b) strengths in the grid")
    parser.add_argument("--copies", type=int, default=8, help="(c) copies of the 8 pairs")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    if "a" in args.parts:
        part_a(args.repeats, args.tokens)
    if "b" in args.parts:
        part_b(args.repeats, args.strengths)
    if "c" in args.parts:
        part_c(args.repeats, args.copies)
    print(load_line())


if __name__ == "__main__":
    main()
