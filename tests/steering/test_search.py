"""The layer x strength search: a planted answer is found; batching changes nothing."""

from __future__ import annotations

import math

import pytest
import torch

from mechscope import steering
from mechscope.errors import MechscopeError

from . import toy
from .conftest import PAIRS


@pytest.mark.slow  # trains the toy (400 small steps; ~35 s on the loaded 2-core machine, a few s idle)
def test_search_finds_the_planted_layer_and_strength(tmp_path):
    model = toy.train()
    strengths = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    result = steering.search(
        model, toy.planted_vector(), heldout=toy.heldout_pairs(), strengths=strengths, normalize="none", progress=False
    )
    layer, strength = result.recommended
    assert layer == toy.PLANTED_LAYER
    assert toy.PLANTED_RANGE[0] <= strength <= toy.PLANTED_RANGE[1]
    cell = result.cell(layer, strength)
    assert cell["anti_steerable"] == 0.0 and cell["pareto"] and cell["behaviour"] > 2.0
    others = [li for li, x in enumerate(result.layers) if x != toy.PLANTED_LAYER]
    assert result.behaviour[others].abs().max() < cell["behaviour"] / 4
    result.save(tmp_path / "search")
    back = steering.SearchResult.load(tmp_path / "search")
    assert back.recommended == result.recommended and torch.equal(back.behaviour, result.behaviour)
    assert result.plot() is not None and result.plot_pareto() is not None


def test_batched_cells_equal_one_cell_per_forward(pycode):
    grid = [-1.0, 0.0, 0.5, 1.0]
    batched = steering.search(pycode, PAIRS * 2, layers=[1, 3], strengths=grid, progress=False)
    single = steering.search(pycode, PAIRS * 2, layers=[1, 3], strengths=grid, progress=False, cells_per_forward=1)
    assert batched.layers == [1, 3] and batched.heldout_pairs == 3
    for name in ("behaviour", "fluency"):
        assert torch.allclose(getattr(batched, name), getattr(single, name), atol=1e-4)
    assert torch.equal(batched.behaviour[:, 1], torch.zeros(2))  # strength 0 changes nothing
    assert math.isnan(float(batched.anti_steerable[0, 1]))
    frame = batched.rows()
    assert len(frame) == 8 and {"layer", "strength", "behaviour", "fluency", "anti_steerable"} <= set(frame[0])


def test_generated_text_behaviour(pycode):
    v = steering.contrast(pycode, PAIRS, "blocks.2.hook_resid_post", progress=False)
    result = steering.search(
        pycode,
        v,
        lambda text: text.count("+") - text.count("-"),
        heldout=PAIRS,
        prompts=["x = a", "def f(a, b):\n    return a"],
        strengths=[0.0, 1.0],
        max_new_tokens=6,
        progress=False,
    )
    assert result.metric == "text_fn" and result.behaviour.shape == (1, 2)
    assert float(result.behaviour[0, 0]) == 0.0 and float(result.fluency[0, 0]) == pytest.approx(0.0, abs=1e-5)


def test_search_refuses_bad_settings(pycode):
    with pytest.raises(MechscopeError, match="held-out"):
        steering.search(pycode, steering.SteeringVector({"blocks.1.hook_resid_post": torch.ones(256)}))
    with pytest.raises(MechscopeError, match="finite"):
        steering.search(pycode, PAIRS, strengths=[1.0, float("nan")])
    with pytest.raises(MechscopeError, match="prompts"):
        steering.search(pycode, PAIRS, lambda t: 0.0)
