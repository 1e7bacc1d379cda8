"""Prompts and contexts past a model's positions are refused, or cut where asked (issue 25
item 5): rotary models would otherwise run on positions they never saw, learned-position
models would index past their table."""

from __future__ import annotations

import logging

import pytest
import torch

import mechscope as ms

from .lens.helpers import worded_model
from .models.tiny import tiny_model

LONG = "def f(x):\n    return x + 1\n" * 400    # thousands of tokens


@pytest.mark.parametrize("kind", ["llama", "gpt2"])   # rotary, learned positions; both 64 positions
def test_token_ids_past_the_context_are_refused_or_cut(kind, caplog):
    model = tiny_model(kind)
    assert model.context_length == 64
    ids = torch.randint(0, 97, (2, 65))
    with pytest.raises(ms.MechscopeError, match="65 tokens, which exceed this model's 64 positions") as err:
        model.tokenize(ids)
    assert "\n" not in str(err.value) and "truncate" in str(err.value)
    with pytest.raises(ms.MechscopeError, match="exceed this model's 64 positions"):
        model.run(ids)
    with caplog.at_level(logging.WARNING, logger="mechscope.model"):
        cut = model.tokenize(ids, truncate=True)
    assert cut["input_ids"].shape == (2, 64) and torch.equal(cut["input_ids"], ids[:, :64])
    assert cut["attention_mask"].shape == (2, 64) and "kept its first 64" in caplog.text
    assert model.tokenize(ids[:, :64])["input_ids"].shape == (2, 64)        # exactly the context is fine


def test_text_past_the_context_names_the_longest_prompt():
    model = worded_model()                                                   # GPT-2, 64 learned positions
    with pytest.raises(ms.MechscopeError, match=r"prompt 1 has \d+ tokens, which exceed this model's 64 positions"):
        model.tokenize(["a short one", LONG])
    cut = model.tokenize(["a short one", LONG], truncate=True)
    assert cut["input_ids"].shape[1] == 64 and int(cut["attention_mask"][0].sum()) < 64
