"""The bundled `zoo:chain` model: multi-hop variable binding at every depth, one hop per
layer in its attention; and a recipe that trains deterministically."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mechscope as ms
from mechscope.zoo import chain
from mechscope.zoo.chain import (
    ChainRecipe,
    accuracy,
    attention_to_hops,
    batch_for_step,
    encode,
    eval_set,
    hop_summary,
    make_prompt,
    scaffold_targets,
    train,
)

SHIPPED = Path(chain.__file__).parent / "weights" / "chain"
TINY = ChainRecipe(
    n_statements=4,
    max_depth=2,
    n_layers=2,
    d_model=16,
    n_heads=2,
    d_head=8,
    d_mlp=16,
    batch_size=4,
    steps=3,
    warmup_steps=1,
    eval_every=2,
    eval_prompts=4,
)


def resolve(prompt: str) -> tuple[str, int]:
    """The answer to a prompt (``...,?D``) and its depth, by following the assignments."""
    table = dict(s.split("=") for s in prompt[:-3].split(",") if "=" in s)
    var, depth = prompt[-1], 0
    while var in table:
        var, depth = table[var], depth + 1
    return var, depth


@pytest.fixture(scope="module")
def model() -> ms.Model:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return ms.load("zoo:chain")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((SHIPPED / "card.json").read_text())


@pytest.fixture(scope="module")
def fresh() -> dict:
    """New held-out prompts (another seed than the card's), 200 per depth."""
    recipe = ChainRecipe()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chain, "EVAL_SEED", 4242)
        return eval_set(dataclasses.replace(recipe, eval_prompts=200))


def test_prompts_are_well_formed():
    rng = random.Random(0)
    for depth in (1, 2, 3, 4):
        for _ in range(50):
            prompt, answer, hops, resolved = make_prompt(rng, depth, 8, 4)
            assert resolve(prompt) == (answer, depth) and len(prompt) == 4 * 8 + 2
            statements = prompt[:-3].split(",")
            assert len({s[0] for s in statements}) == 8  # every variable assigned once
            assert statements[hops[0]][0] == prompt[-1] and statements[hops[-1]][-1] == answer
            assert resolved[prompt[-1]] == (answer, depth) and len(resolved) == 8
            assert all(statements[a][2] == statements[b][0] for a, b in zip(hops, hops[1:]))


def test_accuracy_at_every_depth(model, card, fresh):
    assert all(card["metrics"]["accuracy_by_depth"][str(d)] >= 0.95 for d in (1, 2, 3, 4))
    for depth, (tokens, answers, _) in fresh.items():
        assert accuracy(model.hf, tokens, answers) >= 0.93, depth
    evals = eval_set(ChainRecipe())
    for depth, (tokens, answers, _) in evals.items():
        assert accuracy(model.hf, tokens, answers) == pytest.approx(card["metrics"]["accuracy_by_depth"][str(depth)])


def test_text_in_answer_out(model):
    run = model.run(["A=7,B=A,C=5,D=C,?B", "K=3,N=K,P=N,C=9,?P"])
    assert [row[0][0] for row in run.top_tokens(1)] == ["7", "3"]


def test_one_hop_per_layer(model, fresh):
    """From the query, layer l (1..4) of a depth-4 prompt attends to the assignment of hop l."""
    summary = hop_summary(attention_to_hops(model.hf, {4: fresh[4]}))[4]
    for layer in (1, 2, 3, 4):
        assert summary[layer]["hop"] == layer and summary[layer]["mass"] >= 0.5, summary[layer]


def test_card_and_folder(card):
    assert card["recipe"] == dataclasses.asdict(ChainRecipe())
    assert card["vocab"] == chain.VOCAB and card["train_time_s"] > 0 and card["torch"]
    assert set(card["tolerance"]) == {"accuracy", "hop_mass"}
    names = {p.name for p in SHIPPED.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "card.json", "CARD.md"} <= names
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 4 * 2**20


def test_plots(tmp_path):
    paths = chain.plots(SHIPPED, tmp_path)
    assert [p.name for p in paths] == ["chain_accuracy.png", "chain_hop_attention.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_training_batches_and_scaffold_targets():
    tokens, targets = batch_for_step(0, TINY, held_out=set())
    assert torch.equal(tokens, batch_for_step(0, TINY, held_out=set())[0])
    texts = ["".join(chain.VOCAB[t] for t in row[1:]) for row in tokens.tolist()]
    for text, row in zip(texts, targets.tolist()):  # ...,?D7,?B3,?E: each query's answer
        queries = [i for i, ch in enumerate(text) if ch == "?"]
        assert [chain.VOCAB[t] for t in row if t != -100] == [resolve(text[: q + 2])[0] for q in queries]
    first = {t[: t.index("?") + 2] for t in texts}  # the evaluation-style prompts
    kept = ["".join(chain.VOCAB[t] for t in row[1:]) for row in batch_for_step(0, TINY, held_out=first)[0].tolist()]
    assert not {t[: t.index("?") + 2] for t in kept} & first
    keys = scaffold_targets(tokens, targets, TINY.n_layers)
    assert (keys[:, 3, 0] == 1).all()  # layer 0: right-hand token -> left side


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    for name, recipe in (("a", TINY), ("b", TINY), ("c", dataclasses.replace(TINY, seed=1))):
        train(tmp_path / name, recipe, progress=False)
    a, b, c = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    loaded = ms.load(str(tmp_path / "a"))
    assert loaded.tokenizer("A=7,?A")["input_ids"] == encode(["A=7,?A"])[0].tolist()
