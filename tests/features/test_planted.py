"""A planted exact token detector: the store finds it where it is, counts it as often as the
token occurs, and reads its logit effect off W_dec·W_U."""

from __future__ import annotations

import pytest
import torch

from mechscope import features
from mechscope.dictionary import logit_effect
from tests.conftest import requires_pycode

from .helpers import CFG, corpus_tokens, planted_coder, pycode, texts

LATENT = 5


def _planted_token(model, tokens: torch.Tensor) -> int:
    """The most frequent corpus token whose embedding a threshold separates from every other."""
    W_E = model.W_E.detach().float()
    ids, counts = tokens.flatten().unique(return_counts=True)
    for t in ids[counts.argsort(descending=True)].tolist():
        proj = W_E @ W_E[t] / W_E[t].dot(W_E[t])
        proj[t] = -1e9
        if float(proj.max()) < 0.9 and t != model.tokenizer.eos_token_id:
            return int(t)
    raise AssertionError("no separable token")


@requires_pycode
def test_planted_feature(tmp_path):
    model, docs = pycode(), texts()
    tokens = corpus_tokens(model, docs)
    token = _planted_token(model, tokens)
    coder = planted_coder(model, token, latent=LATENT)
    store = features.build(model, coder, docs, tmp_path / "store", tokens=tokens.numel(), cfg=CFG)
    f = store.feature(LATENT)
    text = model.tokenizer.decode([token])
    frequency = float((tokens == token).sum()) / tokens.numel()
    assert store.info()["n_tokens"] == tokens.numel()
    assert f.density == pytest.approx(frequency, abs=0)  # exact: counts over the same tokens
    assert f.count == int((tokens == token).sum()) >= CFG.k
    assert len(f.top) == CFG.k
    for example in f.top:
        assert example.tokens[example.centre] == text
        assert example.value == pytest.approx(0.25, abs=1e-5)
        assert example.acts is not None and max(example.acts) == pytest.approx(0.25, abs=1e-5)
        assert example.acts[example.centre] == max(example.acts)
        for tok, act in zip(example.tokens, example.acts):  # the window's activations: exactly at the token
            assert (act > 0) == (tok == text)
    first = [int(i) for i in (tokens.flatten() == token).nonzero().flatten()[: CFG.k]]
    assert [e.token_index for e in f.top] == first  # ties: the earliest occurrences, in corpus order
    oracle = logit_effect(model, coder, LATENT, k=3)
    assert f.logits_up[0][0] == oracle.top[0][0]
    assert f.logits_up[0][1] == pytest.approx(oracle.top[0][1], rel=1e-4)
    assert f.logits_down[0][0] == oracle.bottom[0][0]
    hits = store.search(token=text, include_dead=True)
    assert LATENT in [r["id"] for r in hits.rows]
