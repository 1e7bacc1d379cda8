"""The fused logit-lens statistics: two-level top-k = torch.topk, chunking changes nothing,
-inf logits, streams read against a final distribution that is not one of them, and
one-call token decoding = one `decode` per token."""

from __future__ import annotations

import pytest
import torch

import mechscope.lens.logit as L
from mechscope.lens import logit_lens
from mechscope.tokens import decode_many

from ..models.tiny import tiny_model
from .helpers import pycode_or_worded, worded_model


@pytest.mark.parametrize("width", [64, 97, 256, 1000, 4096, 4099])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_two_level_topk_is_torch_topk(width, k):
    gen = torch.Generator().manual_seed(width + k)
    x = torch.randn(3, 7, width, generator=gen) * 4
    ours, ref = L.topk(x, k), x.topk(k, dim=-1)
    assert torch.equal(ours.values, ref.values) and torch.equal(ours.indices, ref.indices)
    ties = torch.randint(0, 6, (5, width), generator=gen).float()  # many equal values
    ours, ref = L.topk(ties, k), ties.topk(k, dim=-1)
    assert torch.equal(ours.values, ref.values)
    assert torch.equal(ties.gather(-1, ours.indices), ours.values)  # ids point at those values
    assert all(len(set(row.tolist())) == k for row in ours.indices)


def _reference(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Float64 statistics of [token, stream, vocab] logits; the last stream is the final one."""
    logp = logits.double().log_softmax(-1)
    p = logp.exp()
    final = logp[:, -1:]
    return {
        "entropy": -(p * logp).nansum(-1),
        "kl": (final.exp() * (final - logp)).nansum(-1),
        "top_probs": p.topk(3, dim=-1).values,
    }


def test_chunk_statistics_match_float64_with_minus_inf_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 300, generator=gen) * 5
    logits[:, :, 10:40] = float("-inf")  # tokens no stream can predict, the final one included
    ref = _reference(logits)
    out = L._chunk_statistics(logits.clone(), torch.empty_like(logits), 3, torch.tensor([10, 50]))
    assert torch.allclose(out["entropy"].double(), ref["entropy"], atol=1e-5)
    assert torch.allclose(out["kl"].double(), ref["kl"], atol=1e-4)
    assert torch.equal(out["kl"][:, -1], torch.zeros(6))  # the final stream against itself: exactly 0
    assert torch.allclose(out["top_probs"].double(), ref["top_probs"], atol=1e-6)
    assert torch.equal(out["target_probs"][..., 0], torch.zeros(6, 4))
    assert torch.equal(out["target_ranks"][..., 0], (logits > float("-inf")).sum(-1))


def test_chunking_changes_nothing(monkeypatch):
    model = tiny_model("llama")
    ids = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(2))
    whole = logit_lens(model, ids, targets=[3, 8], k=4)
    monkeypatch.setattr(L, "CHUNK_LOGITS", 97)  # one token per chunk
    tiny = logit_lens(model, ids, targets=[3, 8], k=4)
    for name in ("top_probs", "entropy", "kl", "target_probs"):
        assert torch.allclose(getattr(whole, name), getattr(tiny, name), atol=1e-6), name
    assert torch.equal(whole.top_ids, tiny.top_ids) and torch.equal(whole.target_ranks, tiny.target_ranks)
    assert torch.equal(tiny.kl[-1], torch.zeros_like(tiny.kl[-1]))


def test_kl_is_against_the_model_output_when_the_last_layer_is_left_out():
    model = tiny_model("gemma2")  # soft-capped logits
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(3))
    lens = logit_lens(model, ids, layers=[0], include_mid=False)
    run = model.run(ids, record=lens.sites)
    final = run.logits.double().log_softmax(-1)
    logp = model.to_logits(run.cache[lens.sites[0]]).double().log_softmax(-1)
    assert torch.allclose(lens.kl[0].double(), (final.exp() * (final - logp)).sum(-1), atol=1e-5)
    assert torch.allclose(lens.entropy[0].double(), -(logp.exp() * logp).sum(-1), atol=1e-5)


@pytest.mark.parametrize("make", [worded_model, pycode_or_worded])
def test_decode_many_is_decode(make):
    model = make()
    ids = list(range(0, model.dims.d_vocab, max(1, model.dims.d_vocab // 300)))
    assert decode_many(model, ids) == {t: model.tokenizer.decode([t]) for t in ids}
    assert decode_many(tiny_model("toy"), [5, 3]) == {3: "3", 5: "5"}
