"""The bundled `zoo:icl` model: in-context tasks it reproduces as its card says, with
zero-shot accuracy near chance, each task answering in its own vocabulary; and a recipe that
trains deterministically."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mechscope as ms
from mechscope import zoo
from mechscope.zoo import icl
from mechscope.zoo.checks import COMPARISONS
from mechscope.zoo.icl import TASKS, IclRecipe, batch_for_step, evaluate, permutation, task_pairs, train

SHIPPED = Path(icl.__file__).parent / "weights" / "icl"
TINY = IclRecipe(n_items=8, n_demos=3, n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=16, batch_size=4,
                 steps=3, warmup_steps=2, eval_every=2, eval_shots=2, eval_prompts=4)  # fmt: skip


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((SHIPPED / "card.json").read_text())


@pytest.fixture(scope="module")
def model() -> ms.Model:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return ms.load("zoo:icl")


def test_shipped_weights_reproduce_the_card(model, card):
    assert card["recipe"] == dataclasses.asdict(IclRecipe())
    measured = evaluate(model.hf, IclRecipe())
    for kind in ("icl_accuracy", "zero_shot_accuracy"):
        for task in TASKS:
            assert measured[kind][task] == pytest.approx(card["metrics"][kind][task], abs=1e-6), (kind, task)


def test_card_shows_icl_and_chance_zero_shot(card):
    m = card["metrics"]
    assert set(m["icl_accuracy"]) == set(TASKS)
    assert min(m["icl_accuracy"].values()) >= 0.9
    # zero-shot nothing names the task: the guesses spread over tasks, about 1 in total
    assert sum(m["zero_shot_accuracy"].values()) / len(TASKS) <= 1 / len(TASKS) + 0.1
    assert set(card["tolerance"]) == {"icl_accuracy_abs", "zero_shot_accuracy_abs"}
    assert card["train_time_s"] > 0 and "zero-shot" in (SHIPPED / "CARD.md").read_text()
    checks = COMPARISONS["icl"](card, card)
    assert len(checks) == 2 * len(TASKS) and all(c.ok for c in checks)


def test_text_prompts_through_the_tokenizer(model):
    top = model.run("n3 -> n4 ; n10 -> n11 ; n12 -> n13 ; n7 ->").top_tokens(1)[0][0][0]
    assert top.strip() == "n8"
    assert model.run("n3 -> n4").tokens[0, 0].item() == 0  # BOS added


def test_shipped_folder_is_small_and_complete():
    names = {p.name for p in SHIPPED.iterdir()}
    assert {"config.json", "model.safetensors", "card.json", "CARD.md", "tokenizer.json"} <= names
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 10 * 2**20


def test_tasks_are_told_apart_by_one_demonstration():
    recipe = IclRecipe()
    perm = permutation(recipe)
    n = recipe.n_items
    assert sorted(perm) == list(range(n)) and all((perm[i] - i) % n not in (0, 1, n - 1) for i in range(n))
    pairs = task_pairs(recipe)
    for i in range(n):
        outputs = [pairs[t][i][1] for t in TASKS]
        assert len(set(outputs)) == len(TASKS)


def test_each_task_answers_in_its_own_vocabulary():
    vocab = set(icl.vocabulary(IclRecipe().n_items))
    own = {t: {y for _, y in p} for t, p in task_pairs(IclRecipe()).items()}
    assert all(ys <= vocab for ys in own.values())
    assert all(not (own[a] & own[b]) for a in TASKS for b in TASKS if a < b)
    assert (
        own["successor"] == {f"n{i}" for i in range(16)} and [y for _, y in task_pairs(IclRecipe())["copy"]][3] == "c3"
    )
    shared = task_pairs(dataclasses.replace(IclRecipe(), own_outputs=False))  # the item tasks share the items
    assert {y for t in ("copy", "successor", "predecessor", "permutation") for _, y in shared[t]} == own["successor"]


def test_batches_depend_only_on_the_step():
    tokens, arrows = batch_for_step(4, TINY)
    assert tokens.shape == (TINY.batch_size, 4 * TINY.n_demos) and (tokens[:, 0] == 0).all()
    assert arrows.sum(1).tolist() == [TINY.n_demos] * TINY.batch_size
    no_zero = dataclasses.replace(TINY, zero_shot_loss=False, max_prefix=2)
    tokens2, arrows2 = batch_for_step(4, no_zero)  # no loss without a demonstration; fillers after BOS
    assert (arrows2.sum(1) == (tokens2 == 2).sum(1) - 1).all() and (tokens2[:, 0] == 0).all()
    assert torch.equal(tokens, batch_for_step(4, TINY)[0]) and not torch.equal(tokens, batch_for_step(5, TINY)[0])


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    cards = [
        train(tmp_path / name, recipe, progress=False)
        for name, recipe in (("a", TINY), ("b", TINY), ("c", dataclasses.replace(TINY, seed=1)))
    ]
    a, b, c = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a) and any(not torch.equal(a[k], c[k]) for k in a)
    assert cards[0]["metrics"] == cards[1]["metrics"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    assert ms.load(str(tmp_path / "a")).tokenizer is not None


def test_plots(tmp_path):
    paths = zoo.plots("icl", tmp_path)
    assert [p.suffix for p in paths] == [".png"] and paths[0].read_bytes()[:4] == b"\x89PNG"
