"""Concepts on zoo:pycode: Python token kinds per layer (with control tasks), the on-disk
cache path, in-model LEACE erasure and its loss cost, and the one-line refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from concept_erasure import LeaceFitter

import mechscope as ms
from mechscope.concepts import (
    Eraser,
    Probe,
    collect,
    erasure_cost,
    fit_eraser,
    lm_loss,
    probe,
    probe_layers,
    python_token_kinds,
    read_collected,
    token_function,
)
from mechscope.errors import MechscopeError

from ..conftest import requires_pycode
from .helpers import stdlib_texts

pytestmark = requires_pycode
SITE = "blocks.1.hook_resid_post"
FAST = dict(epochs=2, min_steps=80, batch_size=512, l2=(1e-3, 1e-2, 1e-1))


@pytest.fixture(scope="module")
def model():
    return ms.load("zoo:pycode")


@pytest.fixture(scope="module")
def kinds(model):
    return collect(model, stdlib_texts(16), python_token_kinds, "blocks.*.hook_resid_post")


def test_tokenize_kinds_map_onto_bpe_tokens(model):
    data = collect(model, ["def f(x):\n    return x + 1  # one\n"], python_token_kinds, "hook_embed")
    names = [data.classes[i] for i in data.labels.tolist()]
    pieces = [model.tokenizer.decode([t]) for t in data.groups.tolist()]
    got = dict(zip(pieces, names))
    assert got["def"] == "keyword" and got[" return"] == "keyword"
    assert got[" f"] == "NAME" and got["x"] == "NAME"
    assert got["("] == "OP" and got[" +"] == "OP"
    assert got[" 1"] == "NUMBER" and got[" #"] == "COMMENT"


def test_token_kind_probes_per_layer(kinds):
    """Recorded in the note: the numbers this prints (pytest -s)."""
    sweep = probe_layers(kinds, **FAST)
    best = int(sweep.accuracy.argmax())
    sel = sweep.selectivity
    assert sel is not None
    print({r["site"]: (round(r["accuracy"], 3), round(r["selectivity"], 3)) for r in sweep.table()}, sweep.majority)
    assert float(sweep.accuracy[best]) > sweep.majority + 0.3
    assert float(sel[best]) > 0.1


def test_disk_cache_gives_the_same_rows(model, tmp_path):
    texts = stdlib_texts(3, chars=600)
    memory = collect(model, texts, python_token_kinds, [SITE, "blocks.2.hook_resid_post"])
    disk = collect(model, texts, python_token_kinds, [SITE, "blocks.2.hook_resid_post"], folder=tmp_path / "c")
    again = read_collected(tmp_path / "c")
    assert (tmp_path / "c" / SITE / "shard-00000.npy").is_file()  # the dictionaries' cache layout
    for d in (disk, again):
        assert torch.equal(d.labels, memory.labels) and d.classes == memory.classes
        assert torch.equal(d.groups, memory.groups) and torch.equal(d.texts, memory.texts)
        torch.testing.assert_close(d.x(SITE), memory.x(SITE), atol=1e-5, rtol=1e-5)
    # a probe trains from the cache rows as from memory (same rows, same split)
    a, b = probe(memory, SITE, **FAST).metrics, probe(disk, SITE, **FAST).metrics
    assert a["n_test"] == b["n_test"] and abs(a["test_accuracy"] - b["test_accuracy"]) < 0.02


def test_sequence_and_function_labels(model):
    texts = ["x = 1", "def f():", "y = 2", "class A:"]
    data = collect(model, texts, ["assign", "def", "assign", "class"], SITE)
    assert len(data) == 4 and data.classes == ("assign", "class", "def")
    ends = collect(model, texts, token_function(lambda pieces: [p.endswith(":") for p in pieces]), SITE)
    assert ends.classes == ("False", "True") and len(ends) == sum(len(model.tokenizer(t)["input_ids"]) for t in texts)


def test_in_model_erasure_drops_the_probe_and_costs_loss(model):
    texts = stdlib_texts(12, chars=2500)
    eraser = fit_eraser(model, texts, python_token_kinds, SITE)
    before = probe(collect(model, texts, python_token_kinds, SITE), **FAST).metrics
    with model.edit(*eraser.edits()):
        after = probe(collect(model, texts, python_token_kinds, SITE), **FAST).metrics
    print("token kinds at", SITE, "before", before["test_accuracy"], "after", after["test_accuracy"], after["majority"])
    assert before["test_accuracy"] > after["majority"] + 0.2
    assert after["test_accuracy"] <= after["majority"] + 0.02
    held = stdlib_texts(4, start=40, chars=250)  # each within the model's 128 positions
    cost = erasure_cost(model, eraser, held)
    # the reported cost is the difference of two independent forward passes' losses
    ids = [model.tokenizer(t, return_tensors="pt")["input_ids"] for t in held]
    plain = [model.run(i).logits for i in ids]
    erased = [model.run(i, edits=eraser.edits()).logits for i in ids]

    def mean_loss(logits):
        losses = [F.cross_entropy(lg[0, :-1], i[0, 1:], reduction="sum") for lg, i in zip(logits, ids)]
        return float(sum(losses)) / sum(i.shape[1] - 1 for i in ids)

    assert cost["loss_before"] == pytest.approx(mean_loss(plain), abs=1e-4)
    assert cost["loss_cost"] == pytest.approx(mean_loss(erased) - mean_loss(plain), abs=1e-4)
    assert cost["loss_cost"] > 0
    assert lm_loss(model, held) == pytest.approx(cost["loss_before"], abs=1e-6)
    # the same edits act during generation
    prompt = "def f(x):\n    return"
    assert isinstance(model.generate(prompt, max_new_tokens=5, edits=eraser.edits()), str)


def test_sequential_fitting_equals_the_package_in_float64(tmp_path):
    model = ms.load("zoo:pycode")
    model.hf.double()
    texts = stdlib_texts(3, chars=500)
    sites = ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    eraser = fit_eraser(model, texts, python_token_kinds, sites, batch_size=2)
    # oracle: the second site's activations recorded with the first site erased, fitted at once
    first = Eraser(eraser.model, eraser.classes, "leace", {sites[0]: eraser.parts[sites[0]]})
    with model.edit(*first.edits()):
        data = collect(model, texts, python_token_kinds, sites[1])
    x = data.store[sites[1]].double()
    theirs = LeaceFitter.fit(x, F.one_hot(data.labels, len(data.classes)).double()).eraser
    assert float((eraser(sites[1], x) - theirs(x)).abs().max()) <= 1e-10
    # applied as an edit inside the model, it is the same map
    with model.edit(*eraser.edits()):
        erased = collect(model, texts, python_token_kinds, sites[1]).store[sites[1]].double()
    assert float((erased - theirs(x)).abs().max()) <= 1e-10
    assert Eraser.load(eraser.save(tmp_path / "e")).sites == sites


def test_refusals(model):
    with pytest.raises(MechscopeError, match="labels for 2 texts"):
        collect(model, ["a = 1", "b = 2"], ["x"], SITE)
    with pytest.raises(MechscopeError, match="3 tokens but 2 labels"):
        collect(model, ["a = 1"], [["x", "y"]], SITE)
    with pytest.raises(MechscopeError, match="unknown site|out of range|has 4 layers"):
        collect(model, ["a = 1"], ["x"], "blocks.9.hook_resid_post")
    data = collect(model, stdlib_texts(6, chars=300), python_token_kinds, SITE)
    p = probe(data, **FAST)
    other = ms.load("zoo:chain")
    with pytest.raises(MechscopeError, match="trained on zoo:pycode"):
        p.check(other)
    eraser = fit_eraser(model, ["a = 1 + b"], python_token_kinds, SITE)
    with pytest.raises(MechscopeError, match="fitted on zoo:pycode"):
        eraser.check(other)
    with pytest.raises(MechscopeError, match="nothing to erase"):
        fit_eraser(model, ["a b c d"], python_token_kinds, SITE)
    narrow = Probe("logistic", SITE, "", ("a", "b"), torch.zeros(8), torch.ones(8), {"weight": torch.zeros(8, 1)})
    with pytest.raises(MechscopeError, match="reads 8 features but blocks.1.hook_resid_post has 256"):
        narrow.check(model)
    part = {"proj_left": torch.zeros(8, 2), "proj_right": torch.zeros(2, 8), "bias": torch.zeros(8)}
    with pytest.raises(MechscopeError, match="reads width 8 but the site has 256"):
        Eraser("", ("a", "b"), "leace", {SITE: part}).check(model)
