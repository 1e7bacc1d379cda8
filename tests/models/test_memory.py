"""A model larger than the free memory of its device is refused before a weight is read,
with the size it needs; device_map is passed through (and needs accelerate)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import transformers as T

import mechscope as ms
from mechscope.models import loading, memory


@pytest.fixture
def folder(tmp_path):
    config = T.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=97,
        max_position_embeddings=64,
    )
    T.LlamaForCausalLM(config).save_pretrained(tmp_path)
    return tmp_path


def test_the_meta_count_equals_the_real_one(folder):
    config = T.AutoConfig.from_pretrained(folder)
    real = sum(p.numel() for p in T.LlamaForCausalLM(config).parameters())
    assert memory.parameter_count(T.LlamaForCausalLM, config) == real
    assert memory.parameter_count(T.AutoModelForCausalLM, config) == real
    assert memory.stored_count(folder) == real  # from the safetensors headers alone


def test_a_model_larger_than_free_memory_is_refused_with_its_size(folder, monkeypatch):
    config = T.AutoConfig.from_pretrained(folder)
    n = memory.parameter_count(T.LlamaForCausalLM, config)
    monkeypatch.setattr(memory, "available_bytes", lambda device: n * 4 - 1)  # one byte short in float32
    with pytest.raises(ms.MechscopeError, match=r"needs about .* GiB for its weights in float32.*--dtype bfloat16"):
        ms.load(str(folder))
    assert ms.load(str(folder), dtype="bfloat16").hf.dtype == torch.bfloat16  # half the bytes: fits


def test_the_cpu_reports_its_free_memory():
    free = memory.available_bytes(None)
    assert free is None or free > 0


def test_device_map_needs_accelerate_and_excludes_device(folder):
    with pytest.raises(ms.MechscopeError, match="not both"):
        ms.load(str(folder), device="cpu", device_map="auto")
    if importlib.util.find_spec("accelerate") is None:
        with pytest.raises(ms.MechscopeError, match="pip install accelerate"):
            loading.load(str(folder), device_map="auto")
    else:
        model = ms.load(str(folder), device_map="cpu")
        assert model.run(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, 97)
