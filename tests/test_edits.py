"""Edits and recording options: composition, ablations, positions, padding, early stop,
generation, and hook removal on every exit path."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope import edits

from .conftest import requires_pycode
from .models.tiny import tiny_model


@pytest.fixture(scope="module")
def llama() -> ms.Model:
    return tiny_model("llama")


def _hook_count(model: ms.Model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())


IDS = torch.randint(0, 97, (4, 8), generator=torch.Generator().manual_seed(0))
SITE = "blocks.0.hook_resid_post"


def test_hooks_removed_after_exception_inside_edit(llama):
    def broken(x):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        llama.run(IDS, record="blocks.*", edits=[edits.replace(SITE, broken)])
    assert _hook_count(llama) == 0
    with pytest.raises(ValueError):
        with llama.edit(edits.zero(SITE)):
            assert len(llama._held_edits) == 1
            raise ValueError("user code fails inside the block")
    assert llama._held_edits == [] and _hook_count(llama) == 0


def test_edits_compose_in_order(llama):
    base = llama.run(IDS, record=SITE).cache[SITE]
    vec = torch.randn(32)
    run = llama.run(IDS, record=SITE, edits=[edits.add(SITE, vec), edits.scale(SITE, 2.0)])
    assert torch.allclose(run.cache[SITE], (base + vec) * 2.0, atol=1e-6)
    with llama.edit(edits.add(SITE, vec)):
        held = llama.run(IDS, record=SITE, edits=[edits.scale(SITE, 2.0)])
    assert torch.allclose(held.cache[SITE], run.cache[SITE])


def test_mean_and_resample_ablation(llama):
    reference = llama.run(IDS, record=SITE).cache[SITE]
    other = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(5))
    mean = llama.run(other, record=SITE, edits=[edits.mean(SITE, reference)]).cache[SITE]
    assert torch.allclose(mean, reference.mean(0).expand_as(mean), atol=1e-6)
    flat = llama.run(other, record=SITE, edits=[edits.mean(SITE, reference, over_positions=True)]).cache[SITE]
    assert torch.allclose(flat, reference.mean((0, 1)).expand_as(flat), atol=1e-6)
    a = llama.run(other, record=SITE, edits=[edits.resample(SITE, reference, seed=3)]).cache[SITE]
    b = llama.run(other, record=SITE, edits=[edits.resample(SITE, reference, seed=3)]).cache[SITE]
    assert torch.equal(a, b)
    assert all(any(torch.equal(row, ref) for ref in reference) for row in a)


def test_position_and_head_selection(llama):
    z = "blocks.1.attn.hook_z"
    base = llama.run(IDS, record=z).cache[z]
    out = llama.run(IDS, record=z, edits=[edits.zero(z, positions=[0, -1], heads=[2])]).cache[z]
    changed = (out != base).any(-1)  # [batch, pos, head]
    expected = torch.zeros_like(changed)
    expected[:, [0, -1], 2] = True
    assert torch.equal(changed, expected)


def test_padding_aware_batching_matches_single_runs(llama):
    texts = [torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 7, 5)]
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for i, t in enumerate(texts):
        ids[i, : len(t)], mask[i, : len(t)] = t, 1
    batched = llama.run(ids, attention_mask=mask, record=SITE, batch_size=2)
    last = llama.run(ids, attention_mask=mask, record=SITE, positions=-1)
    for i, t in enumerate(texts):
        single = llama.run(t, record=SITE)
        assert torch.allclose(batched.cache[SITE][i, : len(t)], single.cache[SITE][0], atol=1e-5)
        assert torch.allclose(batched.logits[i, : len(t)], single.logits[0], atol=1e-5)
        assert torch.allclose(last.cache[SITE][i, 0], single.cache[SITE][0, -1], atol=1e-5)
    assert batched.cache[SITE].shape == (3, 7, 32)


def test_early_stop_skips_later_layers(llama):
    calls = []
    handle = llama.module("layers.1").register_forward_hook(lambda *a: calls.append(1))
    try:
        run = llama.run(IDS, record=SITE, logits=False)
    finally:
        handle.remove()
    assert run.logits is None and calls == []
    assert torch.equal(run.cache[SITE], llama.run(IDS, record=SITE).cache[SITE])


def test_cache_to_cpu_and_gradients(llama):
    run = llama.run(IDS, record=SITE, cache_device="cpu", grad=True)
    assert run.cache[SITE].device.type == "cpu" and run.cache[SITE].requires_grad
    assert not llama.run(IDS, record=SITE).cache[SITE].requires_grad


@requires_pycode
def test_edits_stay_active_during_generate():
    model = ms.load("zoo:pycode")
    plain = model.generate("def main():", max_new_tokens=8)
    token = model.tokenizer.encode(" lambda")[-1]
    direction = model.W_U[:, token].detach() / model.W_U[:, token].norm()
    steered = model.generate(
        "def main():", max_new_tokens=8, edits=[edits.add("blocks.3.hook_resid_post", 300 * direction)]
    )
    assert plain != steered  # the edit acted on every generated step
    with model.steer("blocks.3.hook_resid_post", direction, scale=300):
        assert model.generate("def main():", max_new_tokens=8) == steered
    assert model.generate("def main():", max_new_tokens=8) == plain
