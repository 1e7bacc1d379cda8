"""The bundled `zoo:vit-digits` ViT: card accuracy of the shipped weights, its sites and patch
grid, a deterministic recipe, figures, and its attribution maps through `mechscope.vision`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mechscope as ms
from mechscope import vision, zoo
from mechscope.zoo import digits, vit_digits
from mechscope.zoo.vit_digits import VitDigitsRecipe

SHIPPED = Path(vit_digits.__file__).parent / "weights" / "vit-digits"
SHORT = VitDigitsRecipe(epochs=1, d_model=16, n_layers=1, n_heads=2, d_mlp=16, batch_size=256)


@pytest.fixture(scope="module")
def model():
    return ms.load("zoo:vit-digits")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((SHIPPED / "card.json").read_text())


@pytest.fixture(scope="module")
def split(card) -> digits.DigitsData:
    return digits.data(card["recipe"]["seed"], card["recipe"]["test_fraction"])


def test_shipped_weights_reach_the_card_accuracy(model, card, split, tmp_path):
    logits = model.run(split.x_test).logits
    assert logits.shape == (len(split.y_test), 10)
    accuracy = (logits.argmax(-1) == split.y_test).float().mean().item()
    assert accuracy >= 0.95
    assert accuracy == pytest.approx(card["metrics"]["test_accuracy"], abs=1e-3)
    assert card["train_time_s"] <= 600 and "vit-digits" in zoo.names()
    (tmp_path / "card.json").write_text(json.dumps(card))  # `zoo check` reads this card like a retrain's
    assert [c.metric for c in zoo.check("vit-digits", tmp_path) if c.ok] == ["test_accuracy", "train_accuracy"]


def test_sites_and_attention_patterns(model, split):
    x = split.x_test[:4]
    run = model.run(x, record=["blocks.3.attn.pattern.hook_out", "blocks.3.ln1.hook_out"])
    pattern = run.cache["blocks.3.attn.pattern.hook_out"]
    assert pattern.shape == (4, 4, 17, 17)  # 4 heads, class token + 4x4 patches
    assert torch.allclose(pattern.sum(-1), torch.ones(4, 4, 17), atol=1e-5)
    assert run.cache["blocks.3.ln1.hook_out"].shape == (4, 17, 64)


def test_maps_on_the_patch_grid(model, split):
    x = split.x_test[:4]
    for method in ("gradcam", "rollout", "grad_rollout"):
        result = vision.attribute(model, x, method=method)
        assert result.layer_maps.shape == (4, 4, 4) and result.maps.shape == (4, 8, 8), method
        assert torch.isfinite(result.maps).all() and result.maps.abs().sum() > 0
    assert vision.attribute(model, x, method="ig").completeness.max() <= 1e-2


def test_wrong_image_size_is_one_line(model):
    with pytest.raises(ms.MechscopeError, match="8x8 images"):
        vision.attribute(model, torch.randn(2, 1, 12, 12), method="gradcam")


def test_short_runs_are_deterministic(tmp_path):
    cards = [
        vit_digits.train(tmp_path / name, recipe, progress=False)
        for name, recipe in (("a", SHORT), ("b", SHORT), ("c", dataclasses.replace(SHORT, seed=1)))
    ]
    a, b, c = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["patch_embed.weight"], c["patch_embed.weight"])
    assert cards[0]["metrics"] == cards[1]["metrics"]
    assert (tmp_path / "a" / "CARD.md").is_file()
    assert ms.load(str(tmp_path / "a")).run(torch.zeros(1, 1, 8, 8)).logits.shape == (1, 10)


def test_plots(tmp_path):
    paths = zoo.plots("vit-digits", tmp_path)
    assert [p.name for p in paths] == ["vit_digits_samples.png", "vit_digits_confusion.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
