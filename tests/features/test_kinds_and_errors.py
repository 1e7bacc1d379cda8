"""Transcoder and crosscoder stores (their latents read at their own sites, crosscoder latents
classed shared / only-A / only-B), and bad input refused in one line."""

from __future__ import annotations

import sqlite3

import pytest
import torch

import mechscope as ms
from mechscope import features
from mechscope.dictionary import CoderConfig
from mechscope.dictionary import build as build_coder
from mechscope.dictionary.diffing import KINDS, diff
from mechscope.errors import MechscopeError
from tests.conftest import requires_pycode

from .helpers import CFG, corpus_tokens, pycode, texts
from .test_invariants import _coder

pytestmark = requires_pycode


def _top_matches(store, acts: torch.Tensor, latents) -> None:
    for lat in latents:
        column = acts[:, lat]
        order = sorted((i for i in range(len(column)) if column[i] > 0), key=lambda i: (-float(column[i]), i))
        assert [e.token_index for e in store.examples(lat)[0]] == order[: CFG.k]


def test_transcoder_store(tmp_path):
    model = pycode()
    tokens = corpus_tokens(model, texts())[:8]
    torch.manual_seed(0)
    site, target = "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"
    coder = build_coder(CoderConfig("relu", 256, 16, d_out=256, hook_name=site, target_hook=target)).eval()
    store = features.build(model, coder, tokens, tmp_path / "tc", cfg=CFG)
    assert store.info()["kind"] == "transcoder"
    with torch.no_grad():
        acts = coder.encode(model.run(tokens, record=[site], logits=False).cache[site]).reshape(-1, 16)
    _top_matches(store, acts, range(16))
    assert len(store.feature(0).logits_up) == CFG.logits  # its decoder writes the residual stream


def test_crosscoder_store(tmp_path):
    model = pycode()
    tokens = corpus_tokens(model, texts())[:8]
    sites = ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post")
    torch.manual_seed(0)
    coder = build_coder(CoderConfig("crosscoder", 512, 12, hook_name="+".join(sites), blocks=sites))
    with torch.no_grad():  # plant one latent per class: only-A, only-B
        coder.W_dec[0, 256:] = 0
        coder.W_dec[1, :256] = 0
    coder.eval()
    store = features.build(model, coder, tokens, tmp_path / "cc", cfg=CFG)
    kinds = [store.feature(i).kind for i in range(12)]
    assert kinds == [KINDS[int(k)] for k in diff(coder, 0, 1).kind]
    assert kinds[0] == "a_only" and kinds[1] == "b_only" and "shared" in kinds
    with torch.no_grad():
        cache = model.run(tokens, record=list(sites), logits=False).cache
        acts = coder.encode(torch.cat([cache[s] for s in sites], -1)).reshape(-1, 12)
    _top_matches(store, acts, range(12))


def test_bad_input(tmp_path):
    model = pycode()
    tokens = corpus_tokens(model, texts())[:4]
    out = tmp_path / "store"
    features.build(model, _coder(), tokens, out, cfg=CFG)
    with pytest.raises(MechscopeError, match="another dictionary"):
        features.build(model, _coder(seed=2), tokens, out, cfg=CFG)
    with pytest.raises(MechscopeError, match="another model"):
        features.build(ms.load("zoo:induction"), _coder(), tokens, out, cfg=CFG)
    with pytest.raises(MechscopeError, match="no context of 32 tokens"):
        features.build(model, _coder(), [""], tmp_path / "empty", cfg=CFG)
    with pytest.raises(MechscopeError, match="no context of 32 tokens"):
        features.build(model, _coder(), ["short"], tmp_path / "empty", cfg=CFG)
    with pytest.raises(MechscopeError, match="no latent 99"):
        features.open(out).feature(99)
    with pytest.raises(MechscopeError, match="unknown sort"):
        features.open(out).search(sort="id; DROP TABLE latents")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "store.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(MechscopeError, match="not a readable feature store"):
        features.open(tmp_path / "junk")
    with pytest.raises(MechscopeError, match="not a feature store"):
        features.open(tmp_path)
    db = sqlite3.connect(out / "store.sqlite")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(MechscopeError, match="schema 99"):
        features.open(out)


def test_model_diffing_crosscoder_store(tmp_path):
    """A crosscoder over two models (blocks "A:site", "B:site") reads each block from its model."""
    model = pycode()
    tokens = corpus_tokens(model, texts())[:8]
    sites = ("A:blocks.1.hook_resid_post", "B:blocks.3.hook_resid_post")
    torch.manual_seed(1)
    coder = build_coder(CoderConfig("crosscoder", 512, 10, hook_name="+".join(sites), blocks=sites)).eval()
    with pytest.raises(MechscopeError, match="no model is labelled 'A'"):
        features.build(model, coder, tokens, tmp_path / "x", cfg=CFG)
    store = features.build({"A": model, "B": model}, coder, tokens, tmp_path / "diff", cfg=CFG)
    with torch.no_grad():
        cache = model.run(tokens, record=["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"], logits=False).cache
        x = torch.cat([cache["blocks.1.hook_resid_post"], cache["blocks.3.hook_resid_post"]], -1)
        acts = coder.encode(x).reshape(-1, 10)
    _top_matches(store, acts, range(10))
    assert set(store.info()["models"]) == {"A", "B"}
