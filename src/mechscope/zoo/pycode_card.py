"""`zoo:pycode`'s model card: ``card.json`` (recipe, metrics, corpus, software), ``CARD.md``
rendered from it, and the copying-curve figure (`pycode.py` trains and measures)."""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from pathlib import Path

import tokenizers
import torch
import transformers


def make_card(recipe, corpus, tokenizer, train_stream, heldout_stream, metrics: dict) -> dict:
    """The machine-readable model card."""
    return {
        "name": "pycode",
        "architecture": "LlamaForCausalLM (RoPE, RMSNorm, SwiGLU, grouped-query attention)",
        "dtype": "float32",
        "recipe": json.loads(json.dumps(dataclasses.asdict(recipe))),
        "metrics": metrics,
        "data": {
            "source": "Python standard library .py files (sysconfig stdlib path, no site-packages)",
            "python_version": platform.python_version(),
            "stdlib_fingerprint": corpus.fingerprint,
            "n_train_files": len(corpus.train_files),
            "n_heldout_files": len(corpus.heldout_files),
            "n_skipped_not_utf8": corpus.n_skipped,
            "train_tokens": len(train_stream),
            "heldout_tokens": len(heldout_stream),
            "heldout_files": list(corpus.heldout_files),
            "vocab_size": len(tokenizer),
        },
        "software": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "threads": torch.get_num_threads(),
        },
    }


_REPEAT_NOTE = """Why random spans: tiling stdlib text (10-50% of sequences, 1500 steps of
8 x 256 tokens) never formed induction (2nd-copy loss stayed ~ln V). Tiling spans of uniform
random ids formed it in only 2 of 14 GPU runs of 6000 steps; adding `a b a` alternation inside
the spans (as `zoo:induction` does) and 16 x 128-token batches formed it here at steps 4000-4500.
Formation is a plateau escape: another seed or thread count may need more steps.

"""


def render_card(card: dict) -> str:
    """The human-readable model card (``CARD.md``)."""
    r, m, d = card["recipe"], card["metrics"], card["data"]
    return f"""# zoo:pycode

A small {card["architecture"]} trained by mechscope on the Python {d["python_version"]}
standard library's own source ({d["n_train_files"]} train files, {d["train_tokens"]:,} tokens; test
suites {"included" if r["include_tests"] else "excluded"}). {card["dtype"]} weights, untied embeddings, byte-level
BPE tokenizer of {d["vocab_size"]} tokens; `<|endoftext|>` is bos, eos and pad.

| | |
|---|---|
| layers / d_model / heads (kv heads) / d_mlp / context | {r["n_layers"]} / {r["d_model"]} \
/ {r["n_heads"]} ({r["n_kv_heads"]}) / {r["d_mlp"]} / {r["context"]} |
| parameters | {m["n_params"]:,} |
| steps x batch x context = tokens seen | {r["steps"]} x {r["batch_size"]} x {r["context"]} = {m["tokens_seen"]:,} |
| held-out loss ({d["n_heldout_files"]} files chosen by path hash) | {m["heldout_loss"]:.3f} nats/token |
| train-split loss / last-50-step training loss | {m["train_split_loss"]:.3f} / {m["train_loss_last50"]:.3f} |
| copying, random tokens repeated twice: 1st / 2nd copy loss | {m["copying_first_loss"]:.2f} / \
{m["copying_second_loss"]:.2f} nats: induction {"yes" if m["copying_second_loss"] < m["copying_first_loss"] / 2 else "NOT formed"} |
| training wall time / CPU time ({card["software"]["threads"]} threads) | \
{m["train_time_s"] / 60:.1f} / {m["train_cpu_s"] / 60:.1f} min |
| training sequences tiling a {r["repeat_span"][0]}-{r["repeat_span"][1]}-token span: stdlib text / random ids | \
{r["repeat_fraction"]:.0%} / {r.get("random_fraction", 0):.0%} (`a b a` alternation {r.get("alternation_prob", 0):.0%}) |

{_REPEAT_NOTE if r["repeat_fraction"] or r.get("random_fraction") else ""}Stdlib fingerprint (sorted paths and sizes): `{d["stdlib_fingerprint"][:16]}`. A different
Python version gives a different corpus and different weights. Rebuild with
`mechscope.zoo.pycode.train(out_dir, PycodeRecipe())`; every setting is in `card.json`.
"""


def plots(folder: Path, out_dir: Path) -> list[Path]:
    """The copying curve of the card: loss on the first and on the second copy of a
    repeated random sequence across training (induction would pull the second far below)."""
    from matplotlib.figure import Figure

    from mechscope.io import write_figure

    card = json.loads((Path(folder) / "card.json").read_text())
    m = card["metrics"]
    curve = torch.tensor(m["copying_curve"])
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(curve[:, 0], curve[:, 1], label="1st copy")
    ax.plot(curve[:, 0], curve[:, 2], label="2nd copy (in-context)")
    ax.axhline(math.log(card["recipe"]["vocab_size"]), color="grey", ls="--", lw=1, label="ln(vocab): uniform guess")
    ax.set(
        xlabel="training step",
        ylabel="loss (nats)",
        title=f"zoo:pycode copying (held-out loss {m['heldout_loss']:.2f} nats)",
    )
    ax.legend(fontsize=8)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [write_figure(out_dir / "pycode_copying_curve.png", fig)]
