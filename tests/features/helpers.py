"""Shared pieces of the feature-store tests: zoo:pycode, a small stdlib corpus, a dictionary
with a planted exact token detector, and the brute-force oracle (every activation at once)."""

from __future__ import annotations

import functools
import sqlite3
import sysconfig
from pathlib import Path

import torch
from safetensors.torch import load_file

import mechscope as ms
from mechscope.data import contexts as cut_contexts
from mechscope.data import token_stream
from mechscope.dictionary import CoderConfig
from mechscope.dictionary import build as build_coder
from mechscope.features import BuildConfig

SITE = "hook_embed"
CFG = BuildConfig(
    ctx_len=32, batch_size=4, k=6, before=5, after=3, samples=2, co_active=3, neighbours=4, logits=5, checkpoint_every=2
)
N_TOKENS = 32 * 24


@functools.cache
def pycode():
    """zoo:pycode, loaded once for the whole test session (read-only use)."""
    return ms.load("zoo:pycode")


STDLIB_FILES = ("textwrap.py", "json/decoder.py", "json/encoder.py", "bisect.py", "colorsys.py", "keyword.py")


def texts() -> list[str]:
    """A few standard-library sources (read directly: listing the whole stdlib takes seconds)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [(root / name).read_text(encoding="utf-8") for name in STDLIB_FILES]


def corpus_tokens(model, docs, n_tokens: int = N_TOKENS, ctx_len: int = 32) -> torch.Tensor:
    """The contexts the store should read, cut by `mechscope.data` (an independent reader)."""
    stream, _ = token_stream(docs, model.tokenizer, max_tokens=n_tokens)
    return cut_contexts(stream, ctx_len)


def planted_coder(model, token_id: int, d_sae: int = 24, latent: int = 5, seed: int = 0):
    """A ReLU SAE on the embeddings whose latent `latent` fires exactly on `token_id` (with
    activation 0.25 there) and whose other latents are random."""
    W_E = model.W_E.detach().float()
    torch.manual_seed(seed)
    coder = build_coder(CoderConfig("relu", W_E.shape[1], d_sae, hook_name=SITE))
    with torch.no_grad():
        coder.b_dec.zero_()
        coder.b_enc.fill_(-0.05)
        target = W_E[token_id]
        proj = W_E @ target / target.dot(target)  # 1 at the planted token
        others = proj.clone()
        others[token_id] = -1e9
        threshold = float(others.max())
        assert threshold < 0.99, "the planted token's embedding is not separable by a threshold"
        cut = (threshold + 1.0) / 2
        coder.W_enc[:, latent] = target / target.dot(target)
        coder.b_enc[latent] = -cut
        scale = 0.25 / (1.0 - cut)
        coder.W_enc[:, latent] *= scale
        coder.b_enc[latent] *= scale
    coder.eval()
    return coder


def brute_force(model, coder, tokens: torch.Tensor) -> torch.Tensor:
    """Every activation [n_tokens, d_sae], in one pass (the oracle)."""
    with torch.no_grad():
        run = model.run(tokens, record=[SITE], logits=False)
        return coder.encode(run.cache[SITE]).reshape(-1, coder.cfg.d_sae).float()


def store_tables(folder: Path) -> dict:
    """Every table and array of a store (for equality between two stores)."""
    db = sqlite3.connect(folder / "store.sqlite")
    try:
        tables = {
            name: db.execute(f"SELECT * FROM {name} ORDER BY 1, 2").fetchall()  # noqa: S608 (fixed names)
            for name in ("latents", "examples", "corpus", "vocab")
        }
    finally:
        db.close()
    tables["arrays"] = load_file(folder / "arrays.safetensors")
    tables["state"] = load_file(folder / "state.safetensors")
    return tables


def assert_same_store(a: Path, b: Path) -> None:
    ta, tb = store_tables(a), store_tables(b)
    for name in ("latents", "examples", "corpus", "vocab"):
        assert ta[name] == tb[name], name
    for kind in ("arrays", "state"):
        assert ta[kind].keys() == tb[kind].keys()
        for key in ta[kind]:
            assert torch.equal(ta[kind][key], tb[kind][key]), (kind, key)


SCRIPT_TOKEN = "<script>alert(1)</script>"


def dashboard_store(folder: Path, latent: int = 5):
    """A store for the dashboard tests: the planted detector of the corpus's most frequent
    separable token, its dictionary saved on disk (for the prompt page), and that token's
    text in the store's vocabulary replaced by `SCRIPT_TOKEN` (a hostile tokenizer), so that
    every page must escape it. Returns (model, coder, store folder, planted token id)."""
    from mechscope import features

    model, docs = pycode(), texts()
    tokens = corpus_tokens(model, docs)
    W_E = model.W_E.detach().float()
    ids, counts = tokens.flatten().unique(return_counts=True)
    token = None
    for t in ids[counts.argsort(descending=True)].tolist():
        proj = W_E @ W_E[t] / W_E[t].dot(W_E[t])
        proj[t] = -1e9
        if float(proj.max()) < 0.9 and t != model.tokenizer.eos_token_id:
            token = int(t)
            break
    assert token is not None
    coder = planted_coder(model, token, latent=latent)
    coder.save(folder / "sae")
    features.build(model, folder / "sae", tokens, folder / "store", cfg=CFG)
    db = sqlite3.connect(folder / "store" / "store.sqlite")
    db.execute("UPDATE vocab SET text = ? WHERE id = ?", (SCRIPT_TOKEN, token))
    db.execute(
        "UPDATE latents SET top_token = ?, tokens = ? WHERE id = ?", (SCRIPT_TOKEN, f"\n{SCRIPT_TOKEN}\n", latent)
    )
    db.commit()
    db.close()
    return model, coder, folder / "store", token
