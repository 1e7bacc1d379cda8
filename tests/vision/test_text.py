"""IG over `hook_embed` explains a language model's next-token prediction with the same call:
completeness within 1e-2 on zoo:pycode, one score per prompt token, and only IG applies."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope import vision
from tests.conftest import requires_pycode

PROMPT = "def add(a, b):\n    return a +"


@pytest.fixture(scope="module")
def pycode():
    return ms.load("zoo:pycode")


@requires_pycode
def test_ig_over_embeddings_is_complete(pycode):
    result = vision.attribute(pycode, PROMPT, " b", method="ig")
    n = len(pycode.tokenize(PROMPT)["input_ids"][0])
    assert result.maps.shape == (1, n) and len(result.tokens) == n and result.site == "hook_embed"
    assert result.completeness.item() <= 1e-2
    logits = pycode.run(PROMPT).logits[0, -1]
    target = int(result.target[0])
    assert target == pycode.tokenizer.encode(" b", add_special_tokens=False)[0]
    # the output difference is the target logit minus its value with every embedding the mean one
    mean = pycode.W_E.detach().mean(0)
    at_mean = pycode.run(PROMPT, edits=[ms.edits.replace("hook_embed", mean)]).logits[0, -1, target]
    assert result.output_diff.item() == pytest.approx(float(logits[target] - at_mean), abs=1e-4)
    assert torch.isclose(result.maps.sum(), result.output_diff[0], rtol=1e-2)
    # from zero the path jumps next to the origin (the first RMSNorm is scale invariant): the
    # completeness gap says so instead of hiding it
    assert vision.attribute(pycode, PROMPT, " b", method="ig", baseline="zero").completeness.item() > 1e-2
    assert len(result.plot().axes[0].patches) == n  # one bar per token


@requires_pycode
def test_text_refuses_other_methods_and_bad_targets(pycode):
    with pytest.raises(ms.MechscopeError, match="method='ig'"):
        vision.attribute(pycode, PROMPT, method="gradcam")
    with pytest.raises(ms.MechscopeError, match="outside the vocabulary"):
        vision.attribute(pycode, PROMPT, 10**7, method="ig")
    with pytest.raises(ms.MechscopeError, match="non-empty string"):
        vision.attribute(pycode, ["a", "b"], method="ig")
