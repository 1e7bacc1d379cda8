"""The bundled `zoo:modadd` model groks modular addition the way Nanda et al. (2023) describe:
a few key frequencies, restricted << excluded loss, test loss falling long after train loss,
sparser Fourier weights through circuit formation. Plus the recipe's determinism and the
snapshot format's error handling."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mechscope
from mechscope import zoo
from mechscope.errors import MechscopeError
from mechscope.toys import cards, grokking
from mechscope.zoo import WEIGHTS, modadd
from mechscope.zoo.modadd import ModaddRecipe

SHIPPED = WEIGHTS / "modadd"
# A few steps of a tiny model on Z_13: well under a second of training.
TINY = ModaddRecipe(p=13, train_frac=0.5, d_model=16, n_heads=2, d_head=8, d_mlp=32, steps=8, snapshots=3, eval_every=4)


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((SHIPPED / "card.json").read_text())


@pytest.fixture(scope="module")
def model():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return mechscope.load("zoo:modadd")


@pytest.fixture(scope="module")
def split(card) -> modadd.ModaddData:
    r = card["recipe"]
    return modadd.data(r["p"], r["train_frac"], r["seed"])


@pytest.fixture(scope="module")
def curves() -> grokking.GrokkingCurves:
    return cards.load_modadd_curves(SHIPPED)


def test_split_is_a_seeded_partition():
    a, b = modadd.data(113, 0.3, 0), modadd.data(113, 0.3, 1)
    assert len(a.train_labels) == int(0.3 * 113 * 113) and len(a.train_labels) + len(a.test_labels) == 113 * 113
    rows = lambda t: set(map(tuple, t.tolist()))  # noqa: E731
    assert not rows(a.train_tokens) & rows(a.test_tokens)
    assert torch.equal(a.train_tokens, modadd.data(113, 0.3, 0).train_tokens)
    assert not torch.equal(a.train_tokens, b.train_tokens)
    assert torch.equal(a.train_labels, (a.train_tokens[:, 0] + a.train_tokens[:, 1]) % 113)
    assert bool((a.train_tokens[:, 2] == 113).all())


def test_shipped_model_generalises(model, split, card):
    p = card["recipe"]["p"]
    logits = model.run(split.test_tokens).logits[:, -1, :p]
    accuracy = (logits.argmax(-1) == split.test_labels).float().mean().item()
    assert accuracy >= 0.99
    assert accuracy == pytest.approx(card["metrics"]["test_accuracy"], abs=1e-3)


def test_fast_training_forward_matches_the_model(model, split):
    tokens = split.test_tokens[:500]
    fast = modadd.last_logits(model.hf, tokens)
    torch.testing.assert_close(fast, model.hf(tokens).logits[:, -1], rtol=1e-4, atol=1e-4)


def test_fourier_basis_is_orthonormal():
    for p in (5, 113):
        basis = grokking.fourier_basis(p, torch.float64)
        torch.testing.assert_close(basis @ basis.T, torch.eye(p, dtype=torch.float64), rtol=0, atol=1e-12)
        assert len(grokking.fourier_labels(p)) == p
    with pytest.raises(MechscopeError):
        grokking.fourier_basis(12)


def test_gini_extremes():
    assert grokking.gini(torch.ones(10)) == pytest.approx(0.0)
    assert grokking.gini(torch.tensor([0.0] * 9 + [1.0])) == pytest.approx(0.9)


def test_few_key_frequencies_carry_the_embedding(model):
    freqs = grokking.key_frequencies(model)
    assert 1 <= len(freqs) <= 6
    assert grokking.key_frequency_share(model, freqs) >= 0.9


def test_restricted_loss_far_below_excluded_loss(model, split):
    freqs = grokking.key_frequencies(model)
    restricted = grokking.restricted_loss(model, split.train_tokens, split.train_labels, freqs)
    excluded = grokking.excluded_loss(model, split.train_tokens, split.train_labels, freqs)
    assert excluded >= 10 * restricted
    assert excluded > 1.0  # without the key frequencies the model is badly wrong


def test_saved_curves_match_the_weights(curves, split):
    last_step, last = modadd.load_snapshots(SHIPPED)[-1]
    assert last_step == int(curves.steps[-1])
    freqs = [int(k) for k in curves.key_freqs]
    again = grokking.grokking_curves([(last_step, last)], *split, key_freqs=freqs)
    for name in (
        "train_loss",
        "test_loss",
        "restricted_loss",
        "excluded_loss",
        "gini_embed",
        "sum_squared_weights",
        "key_share",
    ):
        assert float(getattr(again, name)[-1]) == pytest.approx(float(getattr(curves, name)[-1]), rel=1e-3), name


def _first_below(steps: torch.Tensor, values: torch.Tensor, threshold: float) -> int:
    return int(steps[torch.nonzero(values < threshold).flatten()[0]])


def test_test_loss_falls_long_after_train_loss(curves):
    train_at = _first_below(curves.steps, curves.train_loss, 0.1)
    test_at = _first_below(curves.steps, curves.test_loss, 0.1)
    assert test_at >= 2 * max(train_at, 1)
    # memorised first: near-perfect train accuracy while test accuracy is still low
    early = torch.nonzero(curves.train_accuracy > 0.99).flatten()[0]
    assert curves.test_accuracy[early] < 0.5


def test_phases_are_ordered_and_sparsity_rises(curves):
    mem_end, circuit_end, cleanup_end = (int(x) for x in curves.phases)
    assert 0 < mem_end < circuit_end < cleanup_end <= int(curves.steps[-1])
    at = {int(s): i for i, s in enumerate(curves.steps)}
    for gini in (curves.gini_embed, curves.gini_neuron):
        assert gini[at[circuit_end]] > gini[at[mem_end]] + 0.05  # sparser through circuit formation
        assert gini[at[cleanup_end]] > gini[at[circuit_end]] + 0.1  # and much sparser after cleanup
    # the key frequencies take over the embedding, and the excluded loss rises
    assert curves.key_share[at[cleanup_end]] > curves.key_share[at[mem_end]]
    assert curves.excluded_loss[at[circuit_end]] > curves.excluded_loss[at[mem_end]]


def test_curves_round_trip(curves, tmp_path):
    path = curves.save(tmp_path / "curves.safetensors")
    again = grokking.GrokkingCurves.load(path)
    for field in dataclasses.fields(curves):
        assert torch.equal(getattr(again, field.name), getattr(curves, field.name))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(MechscopeError):
        grokking.GrokkingCurves.load(path)


def test_shipped_folder_is_small_and_complete(card):
    files = [f for f in SHIPPED.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 15 * 2**20
    assert {"config.json", "model.safetensors", "card.json", "CARD.md", "curves.safetensors"} <= {f.name for f in files}
    assert len(list((SHIPPED / "snapshots").iterdir())) == len(card["snapshot_steps"]) >= 15
    assert set(card["tolerance"]) >= {"test_accuracy_min", "note"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny runs: seed 0 twice and seed 1."""
    root = tmp_path_factory.mktemp("modadd")
    out = {name: root / name for name in ("a", "b", "c")}
    for name, recipe in (("a", TINY), ("b", TINY), ("c", dataclasses.replace(TINY, seed=1))):
        raw = modadd.train(out[name], recipe, progress=False)
        assert "analysis" not in raw and not (out[name] / "curves.safetensors").exists()  # raw artifacts only
        cards.analyse_modadd(out[name], progress=False)
    return out


def _all_weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {f"final.{k}": v for k, v in load_file(folder / "model.safetensors").items()}
    for step, model in modadd.load_snapshots(folder):
        tensors.update({f"{step}.{k}": v for k, v in model.state_dict().items()})
    return tensors


def test_recipe_is_deterministic(runs):
    a, b, c = (_all_weights(runs[k]) for k in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["final.embed.weight"], c["final.embed.weight"])
    steps = [s for s, _ in modadd.load_snapshots(runs["a"])]
    assert steps == modadd.snapshot_steps(TINY) == [0, 3, 8]
    card = json.loads((runs["a"] / "card.json").read_text())
    assert card["recipe"]["seed"] == 0 and card["metrics"]["steps"] == 8
    # the analysis added the progress measures of the snapshots, and they match a recomputation
    curves = cards.load_modadd_curves(runs["a"])
    assert card["analysis"] == cards.modadd_summary(cards.modadd_curves(runs["a"]))
    assert [int(s) for s in curves.steps] == steps
    assert card["metrics"]["total_time_s"] >= card["metrics"]["train_time_s"]


def test_corrupt_snapshots_raise(runs, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(runs["a"], folder)
    snapshot = folder / "snapshots" / "step_000003" / "model.safetensors"
    state = load_file(snapshot)
    save_file({k: v for k, v in state.items() if k != "embed.weight"}, snapshot)
    with pytest.raises(MechscopeError, match="does not match"):
        modadd.load_snapshots(folder)
    snapshot.write_bytes(snapshot.read_bytes()[:64])
    with pytest.raises(MechscopeError, match="corrupt or truncated"):
        modadd.load_snapshots(folder)
    shutil.rmtree(folder / "snapshots")
    with pytest.raises(MechscopeError, match="no snapshots"):
        modadd.load_snapshots(folder)


def test_plots_are_written(tmp_path):
    paths = zoo.plots("modadd", tmp_path / "figures")
    assert len(paths) == 3
    for path in paths:
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000


def test_restricted_and_excluded_logits_on_a_planted_table():
    """Logits cos(w_k(a + b − c)) for key k plus a non-key term: restriction keeps exactly the
    key part (up to the constant), exclusion exactly the rest."""
    p = 13
    a, b, c = (torch.arange(p, dtype=torch.float64).view(shape) for shape in ((p, 1, 1), (1, p, 1), (1, 1, p)))
    key = 3 * torch.cos(2 * torch.pi * 2 * (a + b - c) / p) + 2 * torch.sin(2 * torch.pi * 5 * (a + b - c) / p)
    other = torch.cos(2 * torch.pi * 4 * (a - c) / p) + 0.5 + 0 * b
    logits = (key + other).reshape(p * p, p)
    restricted = grokking.restricted_logits(logits, [2, 5])
    excluded = grokking.excluded_logits(logits, [2, 5])
    torch.testing.assert_close(restricted, key.reshape(p * p, p) + 0.5)
    torch.testing.assert_close(excluded, other.reshape(p * p, p))
    with pytest.raises(MechscopeError):
        grokking.restricted_logits(logits, [7])


def test_zoo_train_runs_the_registered_analysis(tmp_path, monkeypatch):
    """`zoo.train("modadd")` = the recipe's raw artifacts + the analysis mechscope.toys registered."""
    monkeypatch.setattr(modadd, "ModaddRecipe", lambda: TINY)
    card = zoo.train("modadd", tmp_path / "m")
    assert card["analysis"] == json.loads((tmp_path / "m" / "card.json").read_text())["analysis"]
    assert (tmp_path / "m" / "curves.safetensors").is_file()
    monkeypatch.delitem(zoo.ANALYSES, "modadd")
    with pytest.raises(MechscopeError, match="import mechscope.toys"):
        zoo.plots("modadd", tmp_path / "figures")
