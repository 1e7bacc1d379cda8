"""Activation sources and on-disk caches: exact values, seeded order, resumable writing."""

import json

import numpy as np
import pytest
import torch

import mechscope as ms
from mechscope.data import DataConfig, load_tokens
from mechscope.dictionary.cache import CacheReader, rows_for_step, write_cache
from mechscope.dictionary.source import ActivationSource, SourceConfig, contexts_of_block, estimate_norm_scale
from tests.models.tiny import tiny_model

SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out"]


def contexts(n=12, ctx=8, seed=0):
    return torch.randint(1, 97, (n, ctx), generator=torch.Generator().manual_seed(seed))


def recorded(model, ids, site, cfg):
    """Reference: the model's own recorded activations at the kept positions, row-major."""
    act = model.run(ids, record=[site]).cache[site].flatten(2)
    keep = torch.ones(ids.shape, dtype=torch.bool)
    keep[:, 0] = not cfg.exclude_first
    for t in cfg.exclude_tokens:
        keep &= ids != t
    return act[keep]


def test_blocks_hold_the_models_activations_shuffled_and_batches_resume_exactly():
    model, ids = tiny_model("llama"), contexts()
    cfg = SourceConfig(batch_tokens=10, model_batch=5, buffer_contexts=4, exclude_tokens=(5,), seed=3)
    source = ActivationSource(model, SITES, ids, cfg)
    assert source.widths == {s: 32 for s in SITES}
    block = source.block(1)
    rows = contexts_of_block(len(ids), 1, 4, 3)
    for s in SITES:
        ref = recorded(model, ids[rows], s, cfg)
        got = block[s]
        assert got.shape == ref.shape
        # same rows up to the block's shuffle: sort both by their first coordinate
        torch.testing.assert_close(got[got[:, 0].argsort()], ref[ref[:, 0].argsort()], rtol=1e-5, atol=1e-6)
    # three epochs visit every context three times
    seen = torch.cat([contexts_of_block(len(ids), b, 4, 3) for b in range(9)])
    assert torch.equal(seen.bincount(minlength=12), torch.full((12,), 3))
    straight = [b for b, _ in zip(source.batches(), range(7))]
    it = source.batches()
    for _ in range(3):
        _, position = next(it)
    resumed = ActivationSource(model, SITES, ids, cfg).batches(position)
    for want, (got, _) in zip(straight[3:], resumed):
        assert all(torch.equal(want[0][s], got[s]) for s in SITES)
    halves = [next(ActivationSource(model, SITES, ids, cfg).batches(rank=r, world=2))[0] for r in (0, 1)]
    assert torch.equal(torch.cat([h[SITES[0]] for h in halves]), straight[0][0][SITES[0]])


def test_norm_scale_gives_mean_norm_sqrt_d():
    x = 3.0 * torch.randn(500, 64)
    scale = estimate_norm_scale(x)
    assert abs(float((x * scale).norm(dim=-1).mean()) - 8.0) < 1e-4
    with pytest.raises(ms.MechscopeError, match="mean norm"):
        estimate_norm_scale(torch.zeros(4, 8))


def test_cache_round_trip_equals_recorded_activations_and_interrupted_writing_resumes(tmp_path, monkeypatch):
    model, ids = tiny_model("gpt2"), contexts(10)
    cfg = SourceConfig(model_batch=4)
    folder = tmp_path / "cache"
    import mechscope.dictionary.cache as cache_module

    real, calls = cache_module.record, []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "record", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_cache(model, SITES, ids, folder, cfg=cfg, shard_contexts=3)
    assert not (folder / "cfg.json").exists() and (folder / "progress.json").is_file()
    with pytest.raises(ms.MechscopeError, match="did not finish"):
        CacheReader(folder)
    calls.clear()
    monkeypatch.setattr(cache_module, "record", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    write_cache(model, SITES, ids, folder, cfg=cfg, shard_contexts=3)
    assert len(calls) == 2  # shards 0, 1 were finished before the crash; 2 and 3 remain
    meta = json.loads((folder / SITES[0] / "cfg.json").read_text())
    assert meta["n_tokens"] == 10 * 7 and meta["shards"] == [21, 21, 21, 7] and meta["d_in"] == 32
    reader = CacheReader(folder, batch_tokens=16, seed=1)
    everything = reader.rows(torch.arange(reader.n_tokens))
    for s in SITES:
        torch.testing.assert_close(everything[s], recorded(model, ids, s, cfg), rtol=0, atol=0)
    assert torch.equal(reader.tokens(), ids[:, 1:].flatten())
    with pytest.raises(ms.MechscopeError, match="other settings"):
        write_cache(model, SITES[:1], ids, folder, cfg=cfg, shard_contexts=3)


def test_cache_batches_are_a_seeded_pure_function_of_the_step(tmp_path):
    model, ids = tiny_model("gpt2"), contexts(6)
    write_cache(model, SITES[0], ids, tmp_path, shard_contexts=4)
    reader = CacheReader(tmp_path, batch_tokens=14, seed=2)
    epoch = torch.cat([rows_for_step(42, s, 14, 2) for s in range(6)])
    assert sorted(epoch[:42].tolist()) == list(range(42)) and sorted(epoch[42:].tolist()) == list(range(42))
    it = reader.batches()
    straight = [next(it) for _ in range(5)]
    assert [p for _, p in straight] == [1, 2, 3, 4, 5]
    again = CacheReader(tmp_path, batch_tokens=14, seed=2).batches(3)
    for want, got in zip(straight[3:], again):
        assert torch.equal(want[0][SITES[0]], got[0][SITES[0]])
    halves = [next(reader.batches(2, rank=r, world=2))[0][SITES[0]] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), straight[2][0][SITES[0]])
    with pytest.raises(ms.MechscopeError, match="no site"):
        CacheReader(tmp_path, sites=["blocks.1.hook_resid_post"])


def test_bad_sites_and_corpus_fail_clearly(tmp_path):
    model = tiny_model("gpt2")
    with pytest.raises(ms.MechscopeError, match="unknown site"):
        ActivationSource(model, "blocks.7.hook_resid_post", contexts())
    with pytest.raises(ms.MechscopeError, match="attention patterns"):
        ActivationSource(model, "blocks.0.attn.hook_pattern", contexts())
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(ms.MechscopeError, match="no readable text"):
        load_tokens(DataConfig(str(tmp_path / "corpus")), object())
    assert np.float32  # numpy is the cache's array format
