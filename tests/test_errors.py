"""Bad input gets a one-line MechscopeError that says what was wrong and what to do."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

import mechscope as ms
from mechscope import edits

from .models.tiny import tiny_model

IDS = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def gpt2() -> ms.Model:
    return tiny_model("gpt2")


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and isinstance(err.value, ms.MechscopeError)
    return text


def test_unknown_site_suggests_close_match(gpt2):
    with pytest.raises(ms.MechscopeError) as err:
        gpt2.run(IDS, record="blocks.0.hook_resid_pots")
    assert "did you mean 'blocks.0.hook_resid_post'" in _one_line(err)


def test_layer_out_of_range(gpt2):
    with pytest.raises(ms.MechscopeError) as err:
        gpt2.run(IDS, record="blocks.9.hook_resid_post")
    assert "this model has 2 layers (0-1)" in _one_line(err)
    with pytest.raises(ms.MechscopeError, match="out of range"):
        gpt2.W_Q(5)


def test_no_resid_mid_in_parallel_blocks():
    with pytest.raises(ms.MechscopeError) as err:
        tiny_model("neox").run(IDS, record="blocks.0.hook_resid_mid")
    assert "parallel" in _one_line(err)


def test_replacement_of_wrong_shape(gpt2):
    with pytest.raises(ms.MechscopeError) as err:
        gpt2.run(IDS, edits=[edits.replace("blocks.0.hook_resid_post", torch.zeros(3, 5))])
    assert "has shape (3, 5) but the site has shape (2, 6, 32)" in _one_line(err)
    with pytest.raises(ms.MechscopeError):
        gpt2.run(IDS, edits=[edits.replace("blocks.0.hook_resid_post", lambda x: x[:, :2])])


def test_bad_selection_and_read_only_sites(gpt2):
    with pytest.raises(ms.MechscopeError, match="head"):
        gpt2.run(IDS, edits=[edits.zero("blocks.0.attn.hook_z", heads=7)])
    with pytest.raises(ms.MechscopeError, match="no head dimension"):
        gpt2.run(IDS, edits=[edits.zero("blocks.0.hook_resid_post", heads=0)])
    with pytest.raises(ms.MechscopeError, match="outside"):
        gpt2.run(IDS, edits=[edits.zero("blocks.0.hook_resid_post", positions=10)])
    with pytest.raises(ms.MechscopeError, match="recorded but not edited"):
        gpt2.run(IDS, edits=[edits.zero("blocks.0.attn.hook_pattern")])
    with pytest.raises(ms.MechscopeError, match="was not recorded"):
        gpt2.run(IDS, record="blocks.0.hook_resid_post").cache["blocks.1.hook_resid_post"]


def test_unknown_model_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ms.MechscopeError) as err:
        ms.load("some-org/not-a-cached-model")
    assert "not on this machine" in _one_line(err)
    with pytest.raises(ms.MechscopeError, match="known ones are"):
        ms.load("zoo:not-in-the-zoo")
    with pytest.raises(ms.MechscopeError, match="no model folder"):
        ms.load("./no/such/folder")


def test_unknown_architecture(tmp_path):
    # causal LMs without a table get the automatic adapter; an encoder-decoder has neither
    config = T.T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=50)
    T.T5ForConditionalGeneration(config).save_pretrained(tmp_path)
    with pytest.raises(ms.MechscopeError) as err:
        ms.load(str(tmp_path))
    text = _one_line(err)
    assert "T5ForConditionalGeneration" in text and "Llama" in text and "families_" in text


def test_not_a_model_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ms.MechscopeError, match="not a Hugging Face model folder"):
        ms.load(str(tmp_path))


def test_token_ids_and_lengths_are_checked(gpt2):
    with pytest.raises(ms.MechscopeError) as err:
        gpt2.run(torch.tensor([[1, 2, 97]]))
    assert "outside this model's vocabulary (0-96)" in _one_line(err)
    with pytest.raises(ms.MechscopeError, match="exceed this model's 64 positions"):
        gpt2.run(torch.zeros(1, 65, dtype=torch.long))
