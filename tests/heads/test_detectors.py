"""Head detectors against hand-built patterns and a planted model whose heads attend at
known offsets: the scores must come out exactly as the definitions say."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from matplotlib.figure import Figure

import mechscope as ms
from mechscope.errors import MechscopeError
from mechscope.heads import (
    HeadScores,
    duplicate_token_scores,
    induction_scores,
    previous_token_scores,
    repeat_span,
    repeated_random_tokens,
    stripe_scores,
)
from mechscope.zoo.transformer import ToyConfig, ToyTransformer

SPAN = 8
LENGTH = 2 * SPAN + 1  # [prefix, r, r]
OFFSETS = (-1, -(SPAN - 1), -SPAN)  # layer 0: previous token, 1: induction, 2: duplicate


def planted_model() -> ms.Model:
    """Three layers; head 0 of layer l attends (all but exactly) to key q + OFFSETS[l]
    through one-hot positions, head 1 attends uniformly. Output projections are zero, so
    every layer sees the same residual stream: the one-hot position."""
    config = ToyConfig(
        vocab_size=16,
        n_ctx=LENGTH,
        d_model=LENGTH,
        n_layers=3,
        n_heads=2,
        d_head=LENGTH,
        d_mlp=0,
        norm="none",
        positions="learned",
    )
    hf = ToyTransformer(config)
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        hf.pos_embed.weight.copy_(torch.eye(LENGTH))
        for block, offset in zip(hf.blocks, OFFSETS):
            block.attn.q.weight[:LENGTH] = 1e4 * torch.eye(LENGTH)  # head 0: q_i = big * e_i
            block.attn.k.weight[:LENGTH] = torch.diag(torch.ones(LENGTH + offset), offset)  # k_j = e_{j - offset}
    return ms.Model(hf, name="planted")


def uniform_mean(queries: range) -> float:
    """The score of a head attending uniformly over the causal prefix: mean of 1/(q+1)."""
    return sum(1 / (q + 1) for q in queries) / len(queries)


@pytest.fixture(scope="module")
def model() -> ms.Model:
    return planted_model()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return repeated_random_tokens(16, SPAN, batch=3, seed=0, prefix_token=0)


def test_planted_heads_attend_where_planted(model, tokens):
    run = model.run(tokens, record="blocks.*.attn.hook_pattern")
    for layer, offset in enumerate(OFFSETS):
        pattern = run.cache[f"blocks.{layer}.attn.hook_pattern"][0, 0]
        for q in range(-offset, LENGTH):
            assert pattern[q, q + offset] == 1.0


def test_previous_token_scores_exact(model, tokens):
    scores = previous_token_scores(model, tokens)
    assert scores.kind == "previous_token" and scores.scores.shape == (3, 2)
    assert scores.scores[0, 0] == 1.0
    # heads planted at offset -m attend uniformly from queries q < m, which have no key there
    for layer, offset in ((1, OFFSETS[1]), (2, OFFSETS[2])):
        early = sum(1 / (q + 1) for q in range(1, -offset)) / (LENGTH - 1)
        torch.testing.assert_close(scores.scores[layer, 0], torch.tensor(early), rtol=1e-6, atol=0)
    expected = uniform_mean(range(1, LENGTH))
    torch.testing.assert_close(scores.scores[:, 1], torch.full((3,), expected), rtol=1e-6, atol=0)
    assert scores.top(1) == [(0, 0, 1.0)]


def test_induction_and_duplicate_scores_exact(model, tokens):
    second_copy = range(LENGTH - SPAN, LENGTH)
    induction, duplicate = induction_scores(model, tokens), duplicate_token_scores(model, tokens)
    assert induction.kind == "induction" and duplicate.kind == "duplicate_token"
    assert induction.scores[:, 0].tolist() == [0.0, 1.0, 0.0]
    assert duplicate.scores[:, 0].tolist() == [0.0, 0.0, 1.0]
    for scores in (induction, duplicate):
        torch.testing.assert_close(scores.scores[:, 1], torch.full((3,), uniform_mean(second_copy)), rtol=1e-6, atol=0)
    assert induction.top(1)[0][:2] == (1, 0) and duplicate.top(1)[0][:2] == (2, 0)
    assert torch.equal(induction_scores(model, tokens, span=SPAN).scores, induction.scores)


def test_padding_is_left_out_of_previous_token_scores(model, tokens):
    mask = torch.ones_like(tokens)
    mask[1, 10:] = 0
    scores = previous_token_scores(model, tokens, attention_mask=mask)
    queries = [q for q in range(1, LENGTH)] * 2 + list(range(1, 10))
    torch.testing.assert_close(
        scores.scores[0, 1], torch.tensor(sum(1 / (q + 1) for q in queries) / len(queries)), rtol=1e-6, atol=0
    )
    assert scores.scores[0, 0] == 1.0


def test_stripe_scores_on_hand_built_patterns():
    patterns = torch.zeros(1, 2, 1, 4, 4)  # [layer, batch, head, q, k]
    patterns[0, 0, 0] = torch.tensor([[1, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0.25, 0.75, 0], [0, 0, 1.0, 0]])
    patterns[0, 1, 0] = torch.tensor([[1, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0.5, 0.5]])
    every = torch.ones(2, 4, dtype=torch.bool)
    # offset -1: batch 0 gives 0.5, 0.25, 1.0; batch 1 gives 1.0, 0, 0.5
    assert stripe_scores(patterns, -1, every).item() == torch.tensor(3.25 / 6).item()  # float32 of the exact mean
    only_last = torch.zeros(2, 4, dtype=torch.bool)
    only_last[:, 3] = True
    assert stripe_scores(patterns, -1, only_last).item() == 0.75
    assert stripe_scores(patterns, 0, only_last).item() == 0.25
    with pytest.raises(MechscopeError, match="offset must be <= 0"):
        stripe_scores(patterns, 1, every)
    with pytest.raises(MechscopeError, match="too short"):
        stripe_scores(patterns, -4, every)


def test_repeated_random_tokens():
    rows = repeated_random_tokens(50, 20, batch=4, seed=3, prefix_token=7)
    assert rows.shape == (4, 41) and rows.dtype == torch.long
    assert (rows[:, 0] == 7).all() and not (rows[:, 1:] == 7).any()
    assert torch.equal(rows[:, 1:21], rows[:, 21:])
    assert all(len(set(row[1:21].tolist())) == 20 for row in rows)  # distinct within a span
    assert torch.equal(rows, repeated_random_tokens(50, 20, batch=4, seed=3, prefix_token=7))
    assert not torch.equal(rows, repeated_random_tokens(50, 20, batch=4, seed=4, prefix_token=7))
    assert repeat_span(rows) == 20 and repeat_span(rows[:, 1:]) == 20
    assert repeated_random_tokens(10, 10, batch=2).shape == (2, 20)
    with pytest.raises(MechscopeError, match="seq_len must be between 1 and 9"):
        repeated_random_tokens(10, 10, prefix_token=0)


def test_non_repeated_tokens_are_refused(model):
    with pytest.raises(MechscopeError, match="repeated twice"):
        induction_scores(model, torch.arange(10)[None])
    with pytest.raises(MechscopeError, match="token ids"):
        duplicate_token_scores(model, "some text")


def test_scores_any_family_and_plot():
    config = T.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64)
    torch.manual_seed(0)
    model = ms.Model(T.GPT2LMHeadModel(config), name="tiny-gpt2")
    tokens = repeated_random_tokens(97, 12, batch=2, seed=0)
    for detector in (previous_token_scores, induction_scores, duplicate_token_scores):
        scores = detector(model, tokens).scores
        assert scores.shape == (2, 4) and ((scores >= 0) & (scores <= 1)).all()
    fig = HeadScores(torch.tensor([[0.1, 0.9], [0.5, 0.2]]), "induction").plot()
    assert isinstance(fig, Figure) and fig.axes[0].get_title() == "induction score"
    assert HeadScores(torch.tensor([[0.1, 0.9], [0.5, 0.2]]), "induction").top(2) == [
        (0, 1, pytest.approx(0.9)),
        (1, 0, pytest.approx(0.5)),
    ]


def test_cli_bad_input_is_one_line(capsys):
    from mechscope.cli import main

    for argv, text in [
        (["heads", "zoo:digits"], "zoo:digits has no attention heads"),
        (["heads", "zoo:induction", "--batch", "0"], "batch must be at least 1"),
        (["heads", "zoo:induction", "--top", "-2"], "k must be 0 or more"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mechscope: error:") and "\n" not in err and text in err, err
