"""The real-data demonstration on zoo:pycode: one screened function-vector task with its
compression figure, and one relation with its faithfulness against the most-frequent-object
baseline. The numbers are what the small model does; the asserts hold them to what was
measured when these tests were written (see the report), not to the paper's."""

from __future__ import annotations

import pytest

import mechscope as ms
from mechscope.incontext import builtin_tasks, function_vector, relation, screen
from mechscope.incontext.tasks import PYCODE_WORDS

from ..conftest import requires_pycode

pytestmark = [requires_pycode, pytest.mark.slow]


@pytest.fixture(scope="module")
def model() -> ms.Model:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return ms.load("zoo:pycode")


def test_attribute_copy_is_screened_in_and_its_vector_compresses_the_prompt(model):
    task = builtin_tasks()["pycode/attribute-copy"]
    keep, icl, zero = screen(model, task, shots=5, n_prompts=48, threshold=0.1)
    assert keep and icl - zero > 0.1, (icl, zero)
    result = function_vector(model, task, n_heads=4, shots=5, n_prompts=48)
    # compression: the 5 demonstrations' tokens are replaced by one vector
    assert (
        result.tokens_saved == pytest.approx(result.icl_tokens - result.zero_shot_tokens) and result.tokens_saved > 25
    )
    assert result.fv_accuracy > result.zero_shot_accuracy, result.summary()


def test_getter_relation_is_faithful_beyond_the_most_frequent_object(model):
    """`def get_X(self): return self.` -> the model's own next token, from the subject `get_X`."""
    prompts = [f"    def get_{w}(self):\n        return self." for w in PYCODE_WORDS]
    subjects = [f"get_{w}" for w in PYCODE_WORDS]
    result = relation(
        model, prompts, subjects, "blocks.1.hook_resid_post", "blocks.3.hook_resid_post", ranks=[4, 16, 64, 256]
    )
    # measured when written: faithfulness 0.5 at beta 1 (0.75 at beta 2) against a baseline of 0.0,
    # causality 0.625 at rank 16, on 8 held-out attributes
    assert result.faithfulness >= result.baseline + 0.25, result.summary()
    assert result.causality >= 0.25, result.summary()
