"""Token energy: 1 for latents built from output embeddings, 0 for latents orthogonal to
them; the sphere normalisation; the end-to-end path through a model's streams."""

from __future__ import annotations

import logging

import pytest
import torch

import mechscope as ms
from mechscope.lens import TokenEnergy, effective_unembedding, token_energy, token_space

from ..models.tiny import tiny_model
from .helpers import check_shapes

SUBSET = [2, 3, 5, 8, 13, 21, 34, 55, 89, 90]


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma2"])  # RMSNorm, LayerNorm (centring), Gemma's 1 + w
def test_energy_is_one_inside_the_span_and_zero_orthogonal(kind):
    model = tiny_model(kind)
    space = token_space(model, tokens=SUBSET)
    u, centre = effective_unembedding(model, SUBSET)
    assert centre == (kind == "gpt2") and space.basis.shape == (32, len(SUBSET))
    g = torch.Generator().manual_seed(0)
    inside = torch.randn(5, len(SUBSET), generator=g, dtype=torch.float64) @ u.T  # [5, d_model]
    assert torch.allclose(space.energy(inside), torch.ones(5), atol=1e-5)
    noise = torch.randn(5, 32, generator=g, dtype=torch.float64)
    outside = noise - (noise @ space.basis) @ space.basis.T
    assert torch.allclose(space.energy(outside), torch.zeros(5), atol=1e-5)
    assert torch.allclose(space.relative(outside), torch.zeros(5), atol=1e-5)
    mixed = space.energy(inside + outside)
    assert ((mixed > 0) & (mixed < 1)).all()
    if centre:  # the norm removes the mean direction: it cannot change the energy
        assert torch.allclose(space.energy(inside + 3.0), torch.ones(5), atol=1e-5)


def test_relative_energy_averages_one_over_the_sphere():
    model = tiny_model("llama")
    space = token_space(model, tokens=SUBSET)
    directions = torch.randn(20000, 32, generator=torch.Generator().manual_seed(1))
    assert abs(float(space.relative(directions).mean()) - 1.0) < 0.05
    top = space.basis[:, 0]  # the most-read direction is above average
    assert float(space.relative(top)) > 1.5


def test_rank_keeps_the_top_singular_directions(caplog):
    model = tiny_model("mistral")
    with caplog.at_level(logging.WARNING):
        whole = token_space(model)  # 97 tokens span all of d_model = 32
    assert "span the whole residual space" in caplog.text
    assert torch.allclose(whole.energy(torch.randn(4, 32)), torch.ones(4), atol=1e-5)
    space = token_space(model, rank=4)
    assert space.basis.shape == (32, 4)
    latents = torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64)) @ space.basis.T  # [4, d_model]
    assert torch.allclose(space.energy(latents), torch.ones(4), atol=1e-6)
    fifth = whole.basis[:, 4]  # the next singular direction is left out
    assert float(space.energy(fifth)) < 1e-6
    for bad in (0, 33, 2.5):
        with pytest.raises(ms.MechscopeError, match="rank must be an integer from 1 to 32"):
            token_space(model, rank=bad)


def test_streams_end_to_end_with_planted_embeddings():
    """A norm-free toy whose input embeddings are its output embeddings (or orthogonal to
    them): the embedding stream's token energy is exactly 1 (or 0)."""
    model = tiny_model("toy_attn_only")
    prompt = torch.tensor([SUBSET[:6]])
    space = token_space(model, tokens=SUBSET)
    with torch.no_grad():
        model.W_E[SUBSET] = model.W_U[:, SUBSET].T
    result = token_energy(model, prompt, tokens=SUBSET, targets=[SUBSET[0], SUBSET[1]])
    assert result.layers == ["embed", "L0", "L1"] and result.rank == len(SUBSET)
    assert torch.allclose(result.energy[0], torch.ones(1, 6), atol=1e-5)
    assert torch.allclose(result.norm[0], model.W_U[:, SUBSET[:6]].norm(dim=0)[None], atol=1e-6)
    assert result.angles[0, 0, 0, 0] < 0.01 and result.angles[0, 0, 1, 1] < 0.01  # each token at itself
    with torch.no_grad():
        noise = torch.randn(len(SUBSET), 32, dtype=torch.float64)
        model.W_E[SUBSET] = (noise - (noise @ space.basis) @ space.basis.T).float()
    result = token_energy(model, prompt, tokens=SUBSET, positions=[-2, -1])
    assert result.energy.shape == (3, 1, 2) and torch.allclose(result.energy[0], torch.zeros(1, 2), atol=1e-5)
    check_shapes(result)


def test_layer_selection_save_plot(tmp_path):
    model = tiny_model("gpt2")
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(2))
    result = token_energy(model, ids, tokens=SUBSET, include_mid=True, targets=[3])
    assert result.layers == ["embed", "L0 mid", "L0", "L1 mid", "L1"]
    assert ((result.energy >= 0) & (result.energy <= 1 + 1e-6)).all()
    summary = result.summary()
    assert summary["energy"].shape == (5,)
    fig = result.plot()
    assert len(fig.axes) == 4
    result.save(tmp_path / "energy")
    back = TokenEnergy.load(tmp_path / "energy")
    assert torch.equal(back.energy, result.energy) and back.targets == result.targets and back.rank == result.rank
    with pytest.raises(ms.MechscopeError, match=r"layer -3 is out of range: this model has 2 layers \(0-1\)"):
        token_energy(model, ids, tokens=SUBSET, layers=[-3])
