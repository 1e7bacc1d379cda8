"""`mechscope report --sae DIR --store STORE`: the corpus's view of the dictionary (dead
fraction, density, top contexts with per-token activations) comes from the store, and a
store of another dictionary is refused."""

from __future__ import annotations

import re

import pytest
import torch

from mechscope import features
from mechscope.dictionary import CoderConfig
from mechscope.dictionary import build as build_coder
from mechscope.errors import MechscopeError
from mechscope.report import build_report
from mechscope.report.figures import checking
from mechscope.report.sae import section

from ..conftest import requires_pycode
from ..features.helpers import CFG, SITE, corpus_tokens, planted_coder, pycode, texts
from ..features.test_planted import _planted_token
from .page import Page

LATENT = 5


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    model, docs = pycode(), texts()[:2]
    tokens = corpus_tokens(model, docs, n_tokens=32 * 8)
    token = _planted_token(model, tokens)
    coder = planted_coder(model, token, latent=LATENT)
    folder = tmp_path_factory.mktemp("store")
    coder.save(folder / "sae")
    store = features.build(model, coder, docs, folder / "store", tokens=tokens.numel(), cfg=CFG)
    prompt = tokens[(tokens == token).any(1)][:1]  # a corpus context holding the planted token
    return model, folder, store, prompt


@requires_pycode
def test_store_gives_the_dead_fraction_density_and_contexts(built):
    model, folder, store, prompt = built
    run = model.run(prompt)
    with checking() as seen:
        text = section(model, run, folder / "sae", store_dir=folder / "store", n_features=24)
    page = Page(text)
    i = page.cells.index("dead fraction (never active on the evaluation corpus)")
    assert page.cells[i + 1] == f"{len(store.dead()) / store.d_sae:.4g}" and page.cells[i + 2] == "–"
    assert any("Feature density over the store" in title for title, _, _ in seen)
    assert not [found for _, found, _ in seen if found]
    block = text[text.index(f"<h4>feature {LATENT} in the corpus</h4>") :].split("<h4>")[1]
    acts = [float(a) for a in re.findall(r"data-act='([^']+)'", block)]
    expected = [a for e in store.feature(LATENT).top[:3] for a in e.acts]
    assert acts == pytest.approx(expected, abs=1e-3)  # the store's per-token activations, 4 digits
    assert max(acts) == pytest.approx(0.25, abs=1e-4)  # the planted detector's value


@requires_pycode
def test_a_store_of_another_dictionary_or_without_sae_is_refused(built, tmp_path, capsys):
    from mechscope.cli import main

    model, folder, _, _ = built
    other = build_coder(CoderConfig("relu", model.dims.d_model, 24, hook_name=SITE))
    other.save(tmp_path / "other")
    run = model.run(torch.tensor([[1, 2, 3]]))
    with pytest.raises(MechscopeError, match="another dictionary"):
        section(model, run, tmp_path / "other", store_dir=folder / "store")
    with pytest.raises(MechscopeError, match="needs --sae"):
        build_report(model, None, tmp_path / "out", store_dir=folder / "store")
    assert main(["report", "zoo:pycode", "--out", str(tmp_path / "cli"), "--store", str(folder / "store")]) == 2
    assert "needs --sae DIR" in capsys.readouterr().err and not (tmp_path / "cli").exists()
