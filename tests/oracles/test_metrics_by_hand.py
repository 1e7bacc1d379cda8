"""Patching metrics against values read by hand from `model.run(...).logits`, sign
included: patching and circuit discovery normalise the metric (clean = 1, corrupt = 0),
so a metric whose sign or read position is wrong passes them unnoticed."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.patching import metrics
from mechscope.patching.task import Task

from ..conftest import requires_pycode

# Rows of different lengths (right-padded): the metric must read each row's own last token.
CLEAN = ["def add(a, b):\n    return", "def area(width, height):\n    return width *", "x = [1, 2, 3]\nprint(len("]
ANSWERS = [" a", " height", "x"]
WRONG = [" b", " width", "y"]


@pytest.fixture(scope="module")
def pycode():
    return ms.load("zoo:pycode")


@pytest.fixture(scope="module")
def task_and_logits(pycode):
    task = Task.from_prompts(pycode, CLEAN, CLEAN, ANSWERS, WRONG)
    assert task.mask is not None and len(set(task.lengths.tolist())) == 3  # really padded, three lengths
    logits = pycode.run(task.clean, attention_mask=task.attention_mask()).logits.detach()
    return task, logits


def _ids(model, words):
    return [model.tokenizer.encode(w, add_special_tokens=False)[-1] for w in words]


def _by_hand(model, task, logits):
    """Per row: the logits at the row's last real token, read with plain indexing."""
    tok = model.tokenizer
    rows = []
    for i, text in enumerate(CLEAN):
        n = len(tok(text)["input_ids"])
        rows.append(logits[i, n - 1].double())
    return rows


@requires_pycode
def test_logit_diff_is_answer_minus_wrong_with_its_sign(pycode, task_and_logits):
    task, logits = task_and_logits
    answers, wrong = _ids(pycode, ANSWERS), _ids(pycode, WRONG)
    rows = _by_hand(pycode, task, logits)
    per_row = [float(r[a] - r[w]) for r, a, w in zip(rows, answers, wrong)]
    expected = sum(per_row) / len(per_row)
    value = float(metrics.logit_diff(task)(logits))
    assert value == pytest.approx(expected, abs=1e-4)
    # the model prefers the answer on the first prompt (" a" after "return" in add(a, b)):
    # a known sign that a flipped metric cannot reproduce
    assert per_row[0] > 0.5 and value > 0 and expected > 0
    swapped = Task.from_prompts(pycode, CLEAN, CLEAN, WRONG, ANSWERS)
    assert float(metrics.logit_diff(swapped)(logits)) == pytest.approx(-expected, abs=1e-4)
    # the metric also accepts logits already cut to its read positions
    cut = logits[torch.arange(3), metrics.logit_diff(task).positions]
    assert float(metrics.logit_diff(task)(cut)) == pytest.approx(expected, abs=1e-4)
    assert metrics.logit_diff(task).positions.tolist() == [len(pycode.tokenizer(t)["input_ids"]) - 1 for t in CLEAN]


@requires_pycode
def test_probability_logit_and_cross_entropy_by_hand(pycode, task_and_logits):
    task, logits = task_and_logits
    answers = _ids(pycode, ANSWERS)
    rows = _by_hand(pycode, task, logits)
    logit = sum(float(r[a]) for r, a in zip(rows, answers)) / 3
    prob = sum(float(torch.exp(r[a]) / torch.exp(r).sum()) for r, a in zip(rows, answers)) / 3
    ce = sum(float(torch.log(torch.exp(r).sum()) - r[a]) for r, a in zip(rows, answers)) / 3
    assert float(metrics.answer_logit(task)(logits)) == pytest.approx(logit, abs=1e-4)
    assert float(metrics.answer_prob(task)(logits)) == pytest.approx(prob, abs=1e-6)
    assert float(metrics.cross_entropy(task)(logits)) == pytest.approx(ce, abs=1e-4)
    assert 0 < prob < 1 and ce > 0
    assert metrics.answer_prob(task).higher_is_better and metrics.answer_logit(task).higher_is_better
    assert metrics.logit_diff(task).higher_is_better and metrics.cross_entropy(task).higher_is_better is False
    read_at = [len(pycode.tokenizer(t)["input_ids"]) - 1 for t in CLEAN]
    for name in ("logit_diff", "answer_prob", "answer_logit", "cross_entropy"):
        by_name = metrics.by_name(name, task)
        assert by_name.name == name and by_name.positions.tolist() == read_at
        assert float(by_name(logits)) == pytest.approx(float(getattr(metrics, name)(task)(logits)), abs=0)


@requires_pycode
def test_kl_to_clean_by_hand(pycode, task_and_logits):
    task, logits = task_and_logits
    other = pycode.run(
        task.corrupt[:, :], attention_mask=task.attention_mask(), edits=[ms.edits.zero("blocks.1.hook_attn_out")]
    ).logits.detach()
    clean_rows, other_rows = _by_hand(pycode, task, logits), _by_hand(pycode, task, other)
    kl = 0.0
    for p_logits, q_logits in zip(clean_rows, other_rows):
        p, log_p, log_q = p_logits.softmax(-1), p_logits.log_softmax(-1), q_logits.log_softmax(-1)
        kl += float((p * (log_p - log_q)).sum()) / 3
    metric = metrics.kl_to_clean(logits, task)
    assert kl > 1e-3
    assert float(metric(other)) == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert float(metric(logits)) == pytest.approx(0.0, abs=1e-5) and metric.higher_is_better is False
    assert metric.name == "kl_to_clean" and metric.positions.tolist() == task.index().tolist()
    assert metrics.kl_to_clean(logits).positions is None
    assert float(metrics.by_name("kl_to_clean", task, logits)(other)) == pytest.approx(kl, rel=1e-4, abs=1e-6)
    # without a task: the last position of the padded axis
    last = 0.0
    for b in range(3):
        p, log_q = logits[b, -1].double().softmax(-1), other[b, -1].double().log_softmax(-1)
        last += float((p * (p.log() - log_q)).sum()) / 3
    assert float(metrics.kl_to_clean(logits)(other)) == pytest.approx(last, rel=1e-4, abs=1e-6)
    # logits already cut to one position per row ([batch, vocab]) are read as they are
    assert float(metrics.kl_to_clean(logits[:, -1])(other[:, -1])) == pytest.approx(last, rel=1e-4, abs=1e-6)
    with pytest.raises(ms.MechscopeError, match="^kl_to_clean needs the clean logits$"):
        metrics.by_name("kl_to_clean", task)


def test_metric_wrapper_checks_values():
    ok = metrics.as_metric(lambda logits: logits.sum())
    assert float(ok(torch.ones(2, 3, 4))) == 24.0 and ok.name == "<lambda>"
    assert metrics.as_metric(ok) is ok
    assert float(metrics.as_metric(lambda logits: 2, name="two")(torch.ones(1))) == 2.0
    with pytest.raises(
        ms.MechscopeError,
        match=r"^metric 'nan' returned nan: check it for log\(0\), division by zero or "
        r"overflow \(a logit difference in float16\?\)$",
    ):
        metrics.as_metric(lambda logits: logits.sum() * float("nan"), name="nan")(torch.ones(2))
    with pytest.raises(
        ms.MechscopeError,
        match=r"^metric 'vec' returned a tensor of shape \(2,\): it must return one "
        r"number \(average over the batch, e.g. `.mean\(\)`\)$",
    ):
        metrics.as_metric(lambda logits: logits, name="vec")(torch.ones(2))
    with pytest.raises(
        ms.MechscopeError,
        match=r"^metric 'text' returned str: it must return a scalar tensor \(a float is "
        r"accepted but carries no gradient\)$",
    ):
        metrics.as_metric(lambda logits: "x", name="text")(torch.ones(2))

    class Reader:  # a callable object has no __name__: its class names it
        def __call__(self, logits):
            return logits.mean()

    assert metrics.as_metric(Reader()).name == "Reader"
    with pytest.raises(ms.MechscopeError, match="must be callable"):
        metrics.as_metric(3)
    task = Task.from_tokens([[1, 2, 3]], [[1, 2, 4]], [5])
    with pytest.raises(
        ms.MechscopeError,
        match=r"^logit_diff needs the task's wrong tokens \(a foil per prompt\): give "
        r"`wrong`, or use answer_prob / answer_logit$",
    ):
        metrics.logit_diff(task)
    with pytest.raises(
        ms.MechscopeError,
        match=r"^unknown metric 'nope': choose one of \['answer_logit', 'answer_prob', "
        r"'cross_entropy', 'kl_to_clean', 'logit_diff'\]$",
    ):
        metrics.by_name("nope", task)
