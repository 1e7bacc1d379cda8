"""Weight forensics recovers a ROME edit planted in zoo:pycode from the weights alone.

The edit is built as ROME builds it (Meng et al. 2022, eq. 2): k* = the subject's MLP key
(the input of blocks.1's down projection) at its last token averaged over several contexts;
v* = W k* + δ with δ found by gradient steps so that the model outputs a new object right
after the subject; C = E[k kᵀ] over a corpus (the stdlib files zoo:pycode trained on);
ΔW = Λ (C⁻¹k*)ᵀ with Λ = δ / ((C⁻¹k*)ᵀ k*), so that ΔW k* = δ exactly. Forensics sees
only the two models, other contexts (its default templates) and ≥ 100 candidate names.
"""

from __future__ import annotations

import copy

import pytest
import torch

import mechscope as ms
from mechscope import structure as st
from mechscope.data import contexts, stdlib_documents, token_stream
from mechscope.edits import add
from mechscope.model import Model

from ..conftest import requires_pycode

pytestmark = requires_pycode
LAYER = 1
SUBJECT, NEW_OBJECT = "os", " yield"
EDIT_PREFIXES = ("    y = ", "return ", "assert ", "while ", "z = f(", "    for x in ")  # none is a forensics template
NAME = f"blocks.{LAYER}.mlp.W_out"


def _candidates(tokenizer, n: int = 150) -> list[str]:
    """The n most frequent (earliest merged) lowercase words of the vocabulary, and the subject."""
    vocab = tokenizer.get_vocab()
    words = [t[1:] for t in vocab if t.startswith("Ġ") and len(t) >= 4 and t[1:].isalpha() and t[1:].islower()]
    words = sorted(words, key=lambda w: vocab["Ġ" + w])[:n]
    return words if SUBJECT in words else words[:-1] + [SUBJECT]


def _key_moment(model, site: str) -> torch.Tensor:
    stream, _ = token_stream(stdlib_documents(40, split="train"), model.tokenizer, 8000)
    keys = model.run(contexts(stream, 64), record=site, logits=False, batch_size=32).cache[site]
    keys = keys.reshape(-1, keys.shape[-1]).double()
    return keys.T @ keys / len(keys)


def _value_delta(model, prompts: list[str], obj: int) -> torch.Tensor:
    """δ added to the MLP output at the subject's last token that makes `obj` the next token."""
    site = f"blocks.{LAYER}.hook_mlp_out"
    delta = torch.zeros(model.dims.d_model, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=0.3)
    for _ in range(30):
        run = model.run(prompts, edits=[add(site, delta, positions=-1)], grad=True)
        logp = run.logits[torch.arange(len(prompts)), run.lengths - 1].log_softmax(-1)
        loss = -logp[:, obj].mean() + 1e-4 * delta.square().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return delta.detach().double()


@pytest.fixture(scope="module")
def planted():
    base = ms.load("zoo:pycode")
    edited = Model(copy.deepcopy(base.hf), base.tokenizer, name="zoo:pycode+rome")
    prompts = [p + SUBJECT for p in EDIT_PREFIXES]
    site = f"blocks.{LAYER}.mlp.hook_post"
    with torch.no_grad():
        k_star = base.run(prompts, record=site, positions=-1).cache[site][:, 0].double().mean(0)
        c = _key_moment(base, site)
    obj = base.tokenizer.convert_tokens_to_ids(NEW_OBJECT.replace(" ", "Ġ"))
    delta = _value_delta(base, prompts, obj)
    c_inv_k = torch.linalg.solve(c, k_star)
    update = torch.outer(delta / (c_inv_k @ k_star), c_inv_k)  # [d_model, d_mlp], as nn.Linear stores it
    with torch.no_grad():
        edited.hf.model.layers[LAYER].mlp.down_proj.weight += update.float()
    names = _candidates(base.tokenizer)
    return base, edited, prompts, obj, names, st.edit_forensics(base, edited, candidates=names)


def test_the_planted_edit_works(planted):
    base, edited, prompts, obj, _, _ = planted
    before, after = base.run(prompts), edited.run(prompts)
    last = torch.arange(len(prompts)), after.lengths - 1
    assert (after.logits[last].argmax(-1) == obj).all()  # the edit took
    assert (before.logits[last].argmax(-1) != obj).all()  # and was not there before


def test_forensics_finds_the_matrix_and_rank_one(planted):
    _, _, _, _, names, found = planted
    assert len(names) >= 100
    assert found.changed() == [NAME]
    row = found.row(NAME)
    assert row["rank"] == 1 and row["solver"] == "randomized"
    # σ2/σ1 is below the float32 noise floor (tol / σ1, with tol = 1e-5 (σ1(W) + σ1(ΔW)))
    assert row["sigma_ratio"] < row["noise_floor"] / row["sigma_max"] < 1e-4
    untouched = [r for r in found.rows if r["name"] != NAME]
    assert all(r["rank"] == 0 and r["norm"] == 0.0 for r in untouched)


def test_forensics_reads_subject_and_new_object(planted):
    _, _, _, _, names, found = planted
    reading = found.readings[NAME]
    keys = reading["keys"]
    assert keys[0]["name"] == SUBJECT
    assert keys[0]["score"] > 2 * keys[1]["score"]  # not a photo finish
    assert reading["promoted"][0]["token"] == NEW_OBJECT
    assert reading["promoted_direct"][0]["token"] == NEW_OBJECT


def _restored(model, update: torch.Tensor) -> Model:
    """A float64 copy of `model` with `update` ([in, out]) subtracted from the edited matrix."""
    restored = Model(copy.deepcopy(model.hf).double(), model.tokenizer, name="restored")
    weight = restored.hf.model.layers[LAYER].mlp.down_proj.weight
    with torch.no_grad():
        weight -= update.T
    return restored


def test_subtracting_the_recovered_update_restores_the_logits(planted):
    base, edited, prompts, _, _, found = planted
    texts = prompts + ["import sys\nfrom os import path\n", "def f(a, b):\n    return a + b\n"]
    base64 = Model(copy.deepcopy(base.hf).double(), base.tokenizer, name="base")
    want = base64.run(texts).logits
    gap = (_restored(edited, found.update(NAME)).run(texts).logits - want).abs().max()
    # in float64, so that what is left is the recovery's error and the float32 storage of the edit
    assert gap <= 1e-5
    assert (edited.run(texts).logits.double() - want).abs().max() > 1.0  # the edit did change them


def test_forensics_result_round_trips_and_plots(planted, tmp_path):
    *_, found = planted
    again = st.EditForensics.load(found.save(tmp_path / "f"))
    assert again.changed() == found.changed() and again.readings[NAME]["keys"][0]["name"] == SUBJECT
    assert torch.allclose(again.update(NAME), found.update(NAME))
    for fig in (found.plot_spectra(), found.plot_keys(), found.plot_promoted()):
        assert fig.axes


def test_corpus_tokens_alone_find_the_subject(planted):
    """Without candidates: every token of a corpus is matched; the subject's occurrences (as
    'os' or ' os') get the largest response and their contexts carry the promotion of the
    new object."""
    base, edited, *_ = planted
    docs = [d for d in stdlib_documents(split="heldout") if "\nimport os\n" in d][:3]
    found = st.edit_forensics(base, edited, docs, max_tokens=3000, kinds=("W_out",))
    reading = found.readings[NAME]
    shown = [(k["name"], round(k["score"], 2)) for k in reading["keys"][:5]]
    assert [k["name"].strip() for k in reading["keys"][:2]] == [SUBJECT, SUBJECT], shown  # 'os' and ' os'
    assert reading["keys"][1]["score"] > 1.2 * reading["keys"][2]["score"], shown  # measured 7.73 vs 6.04 ('tools')
    assert reading["promoted"][0]["token"] == NEW_OBJECT
    with pytest.raises(ms.errors.MechscopeError, match="non-empty"):
        st.edit_forensics(base, edited, candidates=["os", ""], kinds=("W_out",))
