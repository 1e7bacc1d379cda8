"""Streaming an activation cache larger than memory (`streaming.ShardStream`): the windowed
order read with at most `max_shards` shards held equals the same order read from memory,
batch for batch and training step for step; resuming is exact; storage dtypes cost a
stated FVU."""

import threading

import pytest
import torch

from mechscope.dictionary.cache import CacheReader, write_cache
from mechscope.dictionary.streaming import ShardOrder, ShardStream
from mechscope.dictionary.train import Trainer, train_from_cache
from mechscope.errors import MechscopeError
from tests.dictionary.test_train import CODER, SITE, contexts, same, small
from tests.models.tiny import tiny_model


@pytest.fixture(scope="module")
def acts(tmp_path_factory):
    """16 contexts in 6 shards of unequal size (3 contexts each, the last 1)."""
    folder = tmp_path_factory.mktemp("stream") / "acts"
    write_cache(tiny_model("gpt2"), ["blocks.0.hook_resid_post", SITE], contexts(), folder, shard_contexts=3)
    return folder


def everything(folder):
    reader = CacheReader(folder)
    return reader.rows(torch.arange(reader.n_tokens))


def test_each_epoch_visits_every_row_once_in_windows_of_shards():
    order = ShardOrder([5, 3, 0, 7, 2], window_shards=2, seed=3)
    for epoch in range(3):
        rows = torch.cat([order.window_rows(epoch, w) for w in range(len(order.windows(epoch)))])
        assert sorted(rows.tolist()) == list(range(17))
        # a window's rows come from its own shards only
        for w, shards in enumerate(order.windows(epoch)):
            owned = {r for s in shards for r in range(order.offsets[s], order.offsets[s + 1])}
            assert set(order.window_rows(epoch, w).tolist()) == owned
    assert order.windows(0) != order.windows(1)  # the shards meet other shards next epoch
    # batches are consecutive slots: eight batches of 4 cover two epochs (34 slots) in order
    slots = torch.cat([order.rows_for_step(s, 4) for s in range(8)])
    flat = torch.cat([order.window_rows(e, w) for e in (0, 1) for w in range(len(order.windows(e)))])
    assert torch.equal(slots, flat[:32])


@pytest.mark.parametrize("window,cap", [(1, 2), (2, 2), (2, 4), (1, 1)])
def test_streamed_batches_equal_the_in_memory_order_holding_at_most_max_shards(acts, window, cap):
    whole = everything(acts)
    streamed = ShardStream(acts, batch_tokens=24, seed=5, window_shards=window, max_shards=cap)
    assert not any(shards.maps for shards in streamed._maps.values())  # nothing mapped (no descriptor per shard)
    memory = ShardStream(acts, batch_tokens=24, seed=5, window_shards=window, in_memory=True)
    steps = 3 * streamed.n_tokens // 24 + 2  # three epochs and more
    a, b = streamed.batches(), memory.batches()
    for step in range(steps):
        (x, pos), (y, _) = next(a), next(b)
        index = streamed.order.rows_for_step(step, 24)
        for site in streamed.sites:
            assert torch.equal(x[site], y[site]) and torch.equal(x[site], whole[site][index])
        assert pos == step + 1
    a.close()
    assert 1 <= streamed.peak_held <= cap and streamed.held == 0
    assert memory.peak_held == len(streamed.meta["shards"])


def test_a_resumed_stream_continues_the_same_batches_and_its_thread_ends(acts):
    stream = ShardStream(acts, batch_tokens=16, seed=1, max_shards=2)
    straight = [b for b, _ in zip(stream.batches(), range(12))]
    before = threading.active_count()
    later = stream.batches(7, rank=1, world=2)
    for step in range(7, 12):
        x, _ = next(later)
        assert torch.equal(x[SITE], straight[step][0][SITE][8:16])
    later.close()
    assert threading.active_count() <= before


def test_training_from_two_shards_at_a_time_equals_training_from_memory(acts, tmp_path):
    cfg, coder = small(total_tokens=14 * 32), CODER.replace(hook_name=SITE)
    runs = {}
    for name, kw in {"memory": {"in_memory": True}, "streamed": {"max_shards": 2}}.items():
        stream = ShardStream(acts, batch_tokens=32, seed=cfg.seed, sites=[SITE], **kw)
        trainer = Trainer(stream, [coder], cfg, device="cpu")
        runs[name] = (trainer.fit(progress=False)[0], trainer)
    assert same(runs["memory"][0], runs["streamed"][0])
    assert runs["streamed"][1].stream.peak_held <= 2
    # through train_from_cache, with a resume from the step-4 checkpoint: bit for bit too
    straight = train_from_cache(acts, coder, cfg, progress=False, max_shards=2)
    assert same(straight, runs["memory"][0])
    out = tmp_path / "sae"
    train_from_cache(acts, coder, cfg, out=out, progress=False, stop_after=5, max_shards=2)
    resumed = train_from_cache(acts, coder, cfg, out=out, progress=False, max_shards=2)
    assert same(resumed, straight)
    # another window is another order: the checkpoint refuses it
    with pytest.raises(MechscopeError, match="window_shards"):
        train_from_cache(acts, coder, cfg, out=out, progress=False, max_shards=4, window_shards=2)


def test_half_precision_storage_costs_the_stated_fvu(tmp_path):
    model, ids = tiny_model("gpt2"), contexts(n=24, ctx=16)
    stored = {}
    for dtype in ("float32", "float16", "bfloat16"):
        write_cache(model, SITE, ids, tmp_path / dtype, shard_contexts=10, dtype=dtype)
        stored[dtype] = everything(tmp_path / dtype)[SITE]
        assert stored[dtype].dtype == torch.float32
    ref = stored["float32"]
    fvu = {d: float((stored[d] - ref).pow(2).sum() / (ref - ref.mean(0)).pow(2).sum()) for d in stored}
    assert fvu["float32"] == 0
    assert 0 < fvu["float16"] < 1e-6  # 11-bit mantissa
    assert 1e-7 < fvu["bfloat16"] < 1e-5  # 8-bit mantissa
    # the streamed reader decodes bfloat16 bits the same way
    stream = ShardStream(tmp_path / "bfloat16", batch_tokens=8, seed=0, in_memory=True)
    x, _ = next(stream.batches())
    assert torch.equal(x[SITE], stored["bfloat16"][stream.order.rows_for_step(0, 8)])


def test_bad_settings_and_damaged_shards_fail_clearly(acts, tmp_path):
    with pytest.raises(MechscopeError, match="max_shards"):
        ShardStream(acts, window_shards=3, max_shards=2)
    with pytest.raises(MechscopeError, match="window_shards"):
        ShardOrder([1, 2], window_shards=0, seed=0)
    broken = tmp_path / "broken"
    write_cache(tiny_model("gpt2"), SITE, contexts(n=6), broken, shard_contexts=2)
    stream = ShardStream(broken, batch_tokens=8, seed=0, max_shards=2)
    (broken / SITE / "shard-00001.npy").write_bytes(b"not an array")  # damaged while training
    with pytest.raises(MechscopeError, match="damaged"):
        for _ in zip(stream.batches(), range(10)):
            pass
