"""Store invariants against a brute-force pass (every activation at once): exact top-k with
its windows, histograms that sum to the active count, density, samples that hold what they
say; a build in two halves equals a build at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechscope import features
from mechscope.dictionary import CoderConfig
from mechscope.dictionary import build as build_coder
from mechscope.errors import MechscopeError
from tests.conftest import requires_pycode

from .helpers import CFG, SITE, assert_same_store, brute_force, corpus_tokens, pycode, texts

pytestmark = requires_pycode


def _coder(d_sae: int = 32, seed: int = 1):
    torch.manual_seed(seed)
    coder = build_coder(CoderConfig("relu", 256, d_sae, hook_name=SITE))
    with torch.no_grad():
        coder.b_enc.uniform_(-0.1, 0.0)
    return coder.eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    model, docs = pycode(), texts()
    tokens = corpus_tokens(model, docs)
    coder = _coder()
    store = features.build(model, coder, tokens, tmp_path_factory.mktemp("s") / "store", cfg=CFG)
    return model, coder, tokens, store


def test_top_k_is_the_exact_top_k(built):
    model, coder, tokens, store = built
    acts = brute_force(model, coder, tokens)
    flat_tokens = tokens.flatten()
    ctx = tokens.shape[1]
    for lat in range(coder.cfg.d_sae):
        column = acts[:, lat]
        order = sorted((i for i in range(len(column)) if column[i] > 0), key=lambda i: (-float(column[i]), i))
        top, _ = store.examples(lat)
        assert [e.token_index for e in top] == order[: CFG.k]
        for e in top:
            assert e.value == float(column[e.token_index])
            start = e.token_index - e.token_index % ctx  # the window stays inside its context
            lo = max(start, e.token_index - CFG.before)
            hi = min(start + ctx, e.token_index + CFG.after + 1)
            assert e.acts == column[lo:hi].tolist()
            assert e.tokens == [model.tokenizer.decode([int(t)]) for t in flat_tokens[lo:hi]]
            assert e.tokens[e.centre] == model.tokenizer.decode([int(flat_tokens[e.token_index])])


def test_histogram_density_and_samples(built):
    model, coder, tokens, store = built
    acts = brute_force(model, coder, tokens)
    edges = features.bin_edges().numpy()
    for lat in range(coder.cfg.d_sae):
        column = acts[:, lat]
        active = column[column > 0].double().numpy()
        f = store.feature(lat)
        assert f.count == len(active)
        assert f.density == len(active) / tokens.numel()
        assert sum(f.histogram["heights"]) == f.count
        if f.count == 0:
            assert f.histogram == {"edges": [], "heights": []} and f.top == [] and f.samples == []
            continue
        assert len(f.histogram["edges"]) == len(f.histogram["heights"]) + 1
        expected, _ = np.histogram(np.clip(active, edges[0], edges[-1] * 0.999), bins=edges)
        nz = expected.nonzero()[0]
        assert f.histogram["heights"] == expected[nz[0] : nz[-1] + 1].tolist()
        assert f.max == float(column.max())
        for e in f.samples:
            assert e.value == float(column[e.token_index])
    dead = [lat for lat in range(coder.cfg.d_sae) if not bool((acts[:, lat] > 0).any())]
    assert store.dead() == dead


def test_neighbours_and_co_occurrence(built):
    model, coder, tokens, store = built
    W = torch.nn.functional.normalize(coder.W_dec.detach().float(), dim=-1)
    cos = W @ W.T
    cos.fill_diagonal_(-2)
    acts = brute_force(model, coder, tokens)
    for lat in (0, 7, 31):
        f = store.feature(lat)
        assert [i for i, _ in f.neighbours] == cos[lat].topk(CFG.neighbours).indices.tolist()
        tops = [e.token_index for e in f.top]
        for other, n in f.co_occurring:  # each listed latent is active at that many top tokens
            assert 0 < n <= sum(1 for t in tops if acts[t, other] > 0)
        co_ids = store.array("co_ids")[lat]
        for r, t in enumerate(tops):  # at each top token: the strongest other latents there, in order
            row = acts[t].clone()
            row[lat] = 0
            order = sorted((j for j in range(len(row)) if row[j] > 0), key=lambda j: (-float(row[j]), j))
            assert [j for j in co_ids[r].tolist() if j >= 0] == order[: CFG.co_active]


def test_two_halves_equal_one_build(built, tmp_path):
    model, coder, tokens, _ = built
    half = len(tokens) // 2
    assert half % CFG.batch_size == 0  # batch-aligned halves: each forward pass sees the same batch
    features.build(model, coder, tokens, tmp_path / "once", cfg=CFG)
    features.build(model, coder, tokens[:half], tmp_path / "halves", cfg=CFG)
    store = features.build(model, coder, tokens[half:], tmp_path / "halves", cfg=CFG)
    assert store.info()["n_tokens"] == tokens.numel()
    assert_same_store(tmp_path / "once", tmp_path / "halves")
    again = features.build(model, coder, tokens[half:], tmp_path / "halves", cfg=CFG)  # the same corpus: no-op
    assert again.info()["n_tokens"] == tokens.numel()
    assert_same_store(tmp_path / "once", tmp_path / "halves")
    with pytest.raises(MechscopeError, match="already holds this corpus"):  # the same text, read further
        features.build(model, coder, tokens[half:], tmp_path / "halves", tokens=64, cfg=CFG)


def test_neuronpedia_export(built, tmp_path):
    import json

    _, coder, _, store = built
    paths = features.export_neuronpedia(store, tmp_path / "np", model_id="pycode")
    batch = json.loads(paths[0].read_text())
    assert batch["model_id"] == "pycode" and len(batch["features"]) == coder.cfg.d_sae
    for feat in batch["features"]:
        assert len(feat["pos_str"]) == len(feat["pos_values"]) == CFG.logits
        assert len(feat["neg_str"]) == len(feat["neg_values"]) == CFG.logits
        assert len(feat["freq_hist_data_bar_heights"]) == len(feat["freq_hist_data_bar_values"])
        assert sum(feat["freq_hist_data_bar_heights"]) == store.feature(feat["feature_index"]).count
        for act in feat["activations"]:
            assert len(act["tokens"]) == len(act["values"]) > 0
        assert feat["pos_values"] == sorted(feat["pos_values"], reverse=True)
