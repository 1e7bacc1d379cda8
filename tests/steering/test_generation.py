"""Sliders during generation: where= semantics with the KV cache (against a cache-free
reference loop), per-row strengths in one batch, composition across sites."""

from __future__ import annotations

import pytest
import torch

from mechscope import edits, steering
from mechscope.errors import MechscopeError

from .conftest import PAIRS, PROMPTS

SITE = "blocks.1.hook_resid_post"
STRENGTH = 6.0


@pytest.fixture(scope="module")
def vector(pycode):
    return steering.contrast(pycode, PAIRS, SITE, progress=False)


def _reference(model, prompt: str, vector, strength: float, where: str, steps: int) -> str:
    """Greedy decoding without a KV cache: every step reruns the whole sequence, steering
    prompt positions (< P) or generated ones (>= P) by explicit position lists."""
    ids = model.tokenize(prompt)["input_ids"][0]
    n_prompt = len(ids)
    for _ in range(steps):
        chosen = range(n_prompt) if where == "prompt" else range(n_prompt, len(ids))
        value = vector.directions[SITE] * strength
        extra = [edits.add(SITE, value, positions=list(chosen))] if len(chosen) else []
        logits = model.run(ids, edits=extra).logits[0, -1]
        ids = torch.cat([ids, logits.argmax().view(1)])
    return model.tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("where", ["prompt", "generated"])
def test_where_with_kv_cache_equals_full_reruns(pycode, vector, where):
    prompt = PROMPTS[0]
    got = steering.generate(pycode, prompt, (vector, STRENGTH, where), max_new_tokens=10)
    assert got == _reference(pycode, prompt, vector, STRENGTH, where, 10)
    assert got != pycode.generate(prompt, max_new_tokens=10)  # the steering moved the text


def test_generated_leaves_the_prompt_logits_untouched(pycode, vector):
    plain = pycode.run(PROMPTS).logits
    with steering.steered(pycode, (vector, STRENGTH, "generated")):
        untouched = pycode.run(PROMPTS).logits
    with steering.steered(pycode, (vector, STRENGTH, "prompt")):
        moved = pycode.run(PROMPTS).logits
    assert torch.equal(untouched, plain)
    assert torch.allclose(moved, pycode.run(PROMPTS, edits=steering.vector_edits(vector, STRENGTH)).logits)
    assert (moved - plain).abs().max() > 0.1


@pytest.mark.parametrize("where", ["all", "generated"])
def test_batch_of_one_equals_its_row_in_a_batch_of_four(pycode, vector, where):
    alone = steering.generate(pycode, PROMPTS[2], (vector, STRENGTH, where), max_new_tokens=10)
    rows = torch.tensor([0.0, 0.0, STRENGTH, 0.0])
    batch = steering.generate(pycode, PROMPTS, (vector, rows, where), max_new_tokens=10)
    plain = pycode.generate(PROMPTS, max_new_tokens=10)
    assert batch[2] == alone != plain[2]
    assert [batch[i] for i in (0, 1, 3)] == [plain[i] for i in (0, 1, 3)]


def test_compose_equals_edits_in_sequence_and_scaled_equals_steer(pycode, vector):
    other = steering.contrast(pycode, PAIRS[::-1][:3], "blocks.3.hook_resid_post", progress=False)
    both = steering.compose([(vector, 2.0), (other, -1.5)])
    composed = pycode.run(PROMPTS, edits=steering.vector_edits(both)).logits
    with pycode.steer(SITE, vector.directions[SITE], 2.0):
        with pycode.steer("blocks.3.hook_resid_post", other.directions["blocks.3.hook_resid_post"], -1.5):
            sequential = pycode.run(PROMPTS).logits
    assert torch.allclose(composed, sequential, atol=1e-5, rtol=0)
    with pycode.steer(SITE, vector.directions[SITE], 3.0):
        steer = pycode.run(PROMPTS).logits
    scaled = pycode.run(PROMPTS, edits=steering.vector_edits(3.0 * vector)).logits
    assert torch.equal(scaled, steer)


def test_where_needs_the_offsets_and_bad_strengths_fail(pycode, vector):
    with pytest.raises(MechscopeError, match="steered"):
        pycode.run(PROMPTS[0], edits=steering.vector_edits(vector, 1.0, where="generated"))
    for bad in (float("nan"), float("inf"), "4"):
        with pytest.raises(MechscopeError, match="strength"):
            steering.vector_edits(vector, bad)
    with pytest.raises(MechscopeError, match="where"):
        steering.vector_edits(vector, 1.0, where="after")
