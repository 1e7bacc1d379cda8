"""The "is the model right?" probe on zoo:pycode: labels from the model's own predictions,
site chosen on validation, calibrated, tested next to max-softmax and entropy."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.concepts import (
    ConfidenceProbe,
    answer_correctness,
    auroc,
    next_token_correctness,
    score,
    score_run,
    train_confidence,
)
from mechscope.errors import MechscopeError

from ..conftest import requires_pycode
from .helpers import stdlib_texts

pytestmark = requires_pycode
SITES = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]


@pytest.fixture(scope="module")
def model():
    return ms.load("zoo:pycode")


def test_next_token_labels_are_the_models_own_top1(model):
    texts = stdlib_texts(2, chars=300)
    corr = next_token_correctness(model, texts, SITES[0])
    ids = model.tokenizer(texts[0], return_tensors="pt")["input_ids"]
    logits = model.run(ids).logits[0]
    right = (logits[:-1].argmax(-1) == ids[0, 1:]).long()
    n = len(right)
    assert torch.equal(corr.data.labels[:n], right)
    top = logits[:-1].float().softmax(-1).max(-1).values
    torch.testing.assert_close(corr.max_prob[:n], top, atol=1e-5, rtol=1e-5)
    assert corr.data.classes == ("wrong", "right")


def test_answer_labels_match_the_greedy_answer(model):
    prompts = ["def add(a, b):\n    return", "import os\nimport", "class A:\n    def"]
    greedy = model.generate(prompts, max_new_tokens=4)
    answers = [g[len(p) :] for p, g in zip(prompts, greedy)]
    references = [answers[0].strip(), "zzz", answers[2].strip()]
    corr = answer_correctness(model, prompts, references, SITES[0], max_new_tokens=4)
    assert corr.data.labels.tolist() == [1, 0, 1]
    assert corr.max_prob.shape == (3,)


@pytest.mark.slow
def test_confidence_probe_calibrated_and_compared(model, tmp_path):
    """The note records the numbers this prints (pytest -s)."""
    conf = train_confidence(model, stdlib_texts(40, chars=700), sites=SITES, calibration="temperature")
    t = conf.metrics["test"]
    print({k: v for k, v in t.items()}, conf.metrics["site"], conf.metrics["rows"])
    raw, cal, msp = t["probe_raw"], t["probe_calibrated"], t["max_softmax"]
    assert raw["auroc"] > 0.6  # well above chance, read from the activations alone
    assert cal["auroc"] == pytest.approx(raw["auroc"], abs=1e-9)  # temperature keeps the order
    # calibration is fitted on its own split: it must not make the test split much worse
    assert cal["ece"] <= raw["ece"] + 0.02
    bins = conf.reliability()["probe calibrated"]
    assert float(bins.count.sum()) == conf.metrics["rows"]["test"]
    assert conf.plot().axes
    again = ConfidenceProbe.load(conf.save(tmp_path / "conf"))
    prompt = "def add(a, b):\n    return a + b\n"
    scores = score(model, again, [prompt, "x = 1"])
    run = model.run([prompt, "x = 1"], record=again.site)
    x = run.cache[again.site]
    torch.testing.assert_close(scores.probability, conf(x) * run.mask)
    assert torch.equal(score_run(again, run).probability, scores.probability)
    assert float(scores.probability[1, run.mask[1].sum() :].abs().sum()) == 0  # padding scores 0
    assert len(scores.tokens(1)) == int(run.mask[1].sum())
    assert msp["auroc"] > 0.5 and auroc(-torch.tensor([0.1, 0.9]), torch.tensor([1, 0])) == 1.0


def test_confidence_refusals(model):
    with pytest.raises(MechscopeError, match="at least 8"):
        train_confidence(model, stdlib_texts(3, chars=300), sites=SITES[0])
    with pytest.raises(MechscopeError, match="single token"):
        next_token_correctness(model, ["x"], SITES[0])
    with pytest.raises(MechscopeError, match="one reference per prompt"):
        answer_correctness(model, ["a"], ["b", "c"], SITES[0])
