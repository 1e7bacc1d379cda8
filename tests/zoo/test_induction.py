"""The bundled `zoo:induction` model: a previous-token head in layer 0, an induction head
in layer 1, in-context copying; and a recipe that trains deterministically."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mechscope as ms
from mechscope import zoo
from mechscope.heads import duplicate_token_scores, induction_scores, previous_token_scores, repeated_random_tokens
from mechscope.zoo import induction
from mechscope.zoo.induction import BOS, InductionRecipe, batch_for_step, bump_step, copy_losses, train

SHIPPED = Path(induction.__file__).parent / "weights" / "induction"
TINY = InductionRecipe(
    vocab_size=16,
    context=16,
    d_model=16,
    n_heads=2,
    d_head=8,
    min_span=2,
    max_span=7,
    batch_size=4,
    steps=3,
    warmup_steps=2,
    eval_every=2,
    eval_span=5,
    eval_batch=4,
)


@pytest.fixture(scope="module")
def model() -> ms.Model:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return ms.load("zoo:induction")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((SHIPPED / "card.json").read_text())


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    """Fresh repeated sequences (not the card's evaluation seed)."""
    return repeated_random_tokens(InductionRecipe().vocab_size, 20, batch=32, seed=2024, prefix_token=BOS)


def test_layer0_has_a_previous_token_head(model, tokens):
    scores = previous_token_scores(model, tokens).scores
    assert scores.shape == (2, InductionRecipe().n_heads)
    assert scores[0].max() >= 0.8


def test_layer1_has_an_induction_head(model, tokens):
    scores = induction_scores(model, tokens).scores
    assert scores[1].max() >= 0.8
    best = int(scores[1].argmax())
    assert duplicate_token_scores(model, tokens).scores[1, best] < 0.2  # it looks one token past the duplicate
    assert scores[0].max() < 0.5  # layer 0 alone cannot do induction


def test_second_copy_is_predicted_in_context(model, tokens, card):
    first, second = copy_losses(model.hf, tokens, 20)
    assert first > 0.8 * torch.log(torch.tensor(63.0)).item()  # random tokens: about ln(63) the first time
    assert second <= 0.5 * first
    recipe = InductionRecipe()
    fixed = repeated_random_tokens(recipe.vocab_size, recipe.eval_span, recipe.eval_batch, induction.EVAL_SEED, BOS)
    m = card["metrics"]
    assert copy_losses(model.hf, fixed, recipe.eval_span) == pytest.approx(
        (m["first_copy_loss"], m["second_copy_loss"]), abs=1e-4
    )


def test_card_records_recipe_bump_and_tolerance(card):
    assert card["recipe"] == dataclasses.asdict(InductionRecipe())
    m = card["metrics"]
    assert m["best_prev_token_l0"] >= 0.8 and m["best_induction_l1"] >= 0.8
    assert m["induction_bump_step"] == bump_step(m["curve"]) is not None
    before = [row for row in m["curve"] if row[0] < m["induction_bump_step"]]
    assert before and all(row[2] > 0.5 * row[1] for row in before)
    assert card["train_time_s"] > 0 and card["torch"]
    assert set(card["tolerance"]) >= {
        "first_copy_loss",
        "second_copy_loss",
        "best_prev_token_l0",
        "best_induction_l1",
        "bump_step_relative",
    }
    assert "induction bump" in (SHIPPED / "CARD.md").read_text()


def test_shipped_folder_is_small_and_complete():
    names = {p.name for p in SHIPPED.iterdir()}
    assert {"config.json", "model.safetensors", "card.json", "CARD.md"} <= names
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 2 * 2**20


def test_plots(tmp_path):
    paths = zoo.plots("induction", tmp_path)  # the head heatmaps come from mechscope.toys
    assert len(paths) == 4
    for path in paths:
        assert path.suffix == ".png" and path.read_bytes()[:4] == b"\x89PNG"


def test_batches_hold_a_repeated_span_and_depend_only_on_the_step():
    batch = batch_for_step(5, TINY)
    assert batch.shape == (TINY.batch_size, TINY.context) and (batch[:, 0] == BOS).all()
    assert not (batch[:, 1:] == BOS).any()
    assert torch.equal(batch, batch_for_step(5, TINY)) and not torch.equal(batch, batch_for_step(6, TINY))
    for row in batch.tolist():  # some span of at least min_span tokens occurs twice
        spans = {tuple(row[i : i + TINY.min_span]) for i in range(1, TINY.context - TINY.min_span + 1)}
        assert len(spans) < TINY.context - TINY.min_span


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    cards = [
        train(tmp_path / name, recipe, progress=False)
        for name, recipe in (("a", TINY), ("b", TINY), ("c", dataclasses.replace(TINY, seed=1)))
    ]
    a, b, c = (weights(tmp_path / name) for name in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert cards[0]["metrics"]["curve"] == cards[1]["metrics"]["curve"]
    head = cards[0]["metrics"]["best_prev_token_l0"]  # scored by the analysis mechscope.toys registers
    assert 0.0 <= head <= 1.0 and head == max(cards[0]["metrics"]["prev_token_scores"][0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left
    assert ms.load(str(tmp_path / "a")).dims.n_layers == TINY.n_layers
