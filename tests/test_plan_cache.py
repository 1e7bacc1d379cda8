"""The per-signature cache of site resolution and hook layout (`plan_cache`): the same
answers as working them out each call, runs bit-identical with and without it, errors
unchanged, entries bounded and dropped with their model."""

import gc
import weakref
from collections import defaultdict

import pytest
import torch

import mechscope as ms
from mechscope import plan_cache
from mechscope.errors import MechscopeError
from tests.models.tiny import tiny_model


@pytest.fixture
def uncached(monkeypatch):
    def off():
        monkeypatch.setattr(plan_cache, "ENABLED", False)

    return off


def test_resolution_and_layout_equal_the_uncached_answers():
    table = tiny_model("gpt2").table
    for patterns in ["blocks.*.hook_resid_post", ["blocks.1.attn.hook_z", "hook_embed"], ("blocks.0.*",)]:
        first = plan_cache.resolve(table, patterns)
        assert first == table.resolve(patterns)
        first.append("poison")  # a caller changing its list does not change the cache
        assert plan_cache.resolve(table, patterns) == table.resolve(patterns)
    names = {"blocks.1.hook_resid_post", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"}
    groups, rows_from = plan_cache.layout(table, names)
    expected = defaultdict(list)
    for name in sorted(names, key=table.order.__getitem__):
        expected[(table[name].module, table[name].boundary)].append(table[name])
    assert [(k, list(v)) for k, v in groups] == list(expected.items()) and rows_from == frozenset()
    assert plan_cache.layout(table, list(names)) is plan_cache.layout(table, names)  # one entry per signature


def test_unknown_names_raise_every_time():
    model = tiny_model("llama")
    for _ in range(2):
        with pytest.raises(MechscopeError, match="layers"):
            model.run(torch.tensor([[1, 2, 3]]), record="blocks.9.hook_resid_post")
        with pytest.raises(MechscopeError, match="unknown site"):
            plan_cache.resolve(model.table, ["blocks.0.hook_nothing"])


def test_runs_are_bit_identical_with_and_without_the_cache(uncached):
    model = tiny_model("gpt2")
    ids = torch.randint(1, 97, (2, 6), generator=torch.Generator().manual_seed(0))
    edits = [ms.edits.zero("blocks.0.hook_mlp_out", positions=[2]), ms.edits.scale("blocks.1.attn.hook_z", 0.5)]

    def both():
        runs = [model.run(ids, record=["blocks.*.hook_resid_post", "blocks.0.attn.hook_pattern"], edits=edits)]
        with model.edit(ms.edits.add("blocks.1.hook_resid_pre", torch.ones(model.dims.d_model))):
            runs.append(model.run(ids, record="blocks.1.*", logits=False))
        return runs

    cached = both() + both()  # the second pass reads every entry from the cache
    uncached()
    plain = both()
    for a, b in zip(cached[2:], plain):
        assert a.cache.keys() == b.cache.keys()
        assert all(torch.equal(a.cache[k], b.cache[k]) for k in a.cache)
        assert (a.logits is None and b.logits is None) or torch.equal(a.logits, b.logits)


def test_entries_are_bounded_and_go_with_their_model(monkeypatch):
    monkeypatch.setattr(plan_cache, "LIMIT", 3)
    model = tiny_model("gpt2")
    for layer in range(2):
        for kind in ("hook_resid_pre", "hook_resid_post", "hook_mlp_out"):
            plan_cache.resolve(model.table, f"blocks.{layer}.{kind}")
            assert len(plan_cache._CACHE[model.table]) <= 3
    # Count by identity: other tests' tables may die in the same collection.
    table = weakref.ref(model.table)
    del model
    gc.collect()
    assert table() is None  # the cache held no strong reference, so its entry went too
