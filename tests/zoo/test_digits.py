"""The bundled `zoo:digits` CNN: accuracy of the shipped weights, sites, determinism, corruption."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mechscope as ms
from mechscope.zoo import digits
from mechscope.zoo.digits import DigitsRecipe

SHIPPED = Path(digits.__file__).parent / "weights" / "digits"
SHORT = DigitsRecipe(epochs=1, channels1=4, channels2=8, batch_size=128)


@pytest.fixture(scope="module")
def model():
    return ms.load("zoo:digits")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((SHIPPED / "card.json").read_text())


@pytest.fixture(scope="module")
def split(card) -> digits.DigitsData:
    return digits.data(card["recipe"]["seed"], card["recipe"]["test_fraction"])


def test_shipped_test_accuracy(model, card, split):
    logits = model.run(split.x_test).logits
    assert logits.shape == (len(split.y_test), 10)
    accuracy = (logits.argmax(-1) == split.y_test).float().mean().item()
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(card["metrics"]["test_accuracy"], abs=1e-3)
    cm = torch.tensor(card["metrics"]["confusion_matrix_test"])
    assert cm.sum() == len(split.y_test) and cm.diagonal().sum() / cm.sum() >= 0.97


def test_split_is_stratified_and_normalised(split):
    assert split.x_train.shape[1:] == (1, 8, 8) and split.x_train.dtype == torch.float32
    assert len(split.y_train) + len(split.y_test) == 1797
    counts = torch.bincount(split.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # ~20% of each class's ~180 images
    x = torch.cat([split.x_train, split.x_test])
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01


def test_record_conv_sites(model, split):
    x = split.x_test[:5]
    run = model.run(x, record=["conv1.hook_out", "relu2.hook_out", "fc.hook_in"])
    net = model.hf
    assert run.cache["conv1.hook_out"].shape == (5, 16, 8, 8)
    assert torch.allclose(run.cache["conv1.hook_out"], net.conv1(x), atol=1e-6)
    assert run.cache["fc.hook_in"].shape == (5, 32 * 16)
    assert torch.allclose(run.logits, net.fc(run.cache["fc.hook_in"]), atol=1e-5)


def test_short_runs_are_deterministic(tmp_path):
    cards = [
        digits.train(tmp_path / name, recipe, progress=False)
        for name, recipe in (("a", SHORT), ("b", SHORT), ("c", dataclasses.replace(SHORT, seed=1)))
    ]
    a, b, c = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    assert cards[0]["metrics"] == cards[1]["metrics"]
    assert {"recipe", "metrics", "train_time_s", "software", "tolerance"} <= cards[0].keys()
    assert (tmp_path / "a" / "CARD.md").is_file()


def test_truncated_weights_raise(tmp_path):
    folder = Path(shutil.copytree(SHIPPED, tmp_path / "digits"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ms.MechscopeError, match="corrupt or truncated"):
        ms.load(str(folder))


def test_plots(tmp_path):
    paths = digits.plots(SHIPPED, tmp_path)
    assert [p.name for p in paths] == ["digits_samples.png", "digits_confusion.png", "digits_filters.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
