"""Issue 4, test 4: the head detectors find the known heads of the shipped zoo models: the
planted two-head circuit of `zoo:induction`, and an induction head (with the previous-token
head it composes with, one layer earlier) that training formed in `zoo:pycode`."""

from __future__ import annotations

import mechscope as ms
from mechscope.heads import induction_scores, previous_token_scores, repeated_random_tokens


def detect(name: str, span: int):
    model = ms.load(name)
    tokens = repeated_random_tokens(model.hf.config.vocab_size, span, batch=16, seed=0, prefix_token=0)
    return previous_token_scores(model, tokens).scores, induction_scores(model, tokens).scores


def test_induction_model_has_its_planted_heads():
    prev, ind = detect("zoo:induction", 24)
    assert prev[0].max() >= 0.8 and ind[1].max() >= 0.8
    assert ind[0].max() < 0.1 and prev[1].max() < 0.1  # and each kind only in its own layer


def test_pycode_has_an_induction_head_fed_by_an_earlier_previous_token_head():
    prev, ind = detect("zoo:pycode", 50)  # measured: induction L2H0 0.97, previous-token L1H1 0.99
    layer, head = divmod(int(ind.argmax()), ind.shape[1])
    assert ind[layer, head] >= 0.8
    assert layer > 0 and prev[:layer].max() >= 0.8
