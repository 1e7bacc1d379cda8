"""The bundled `zoo:superposition` toy models reproduce Elhage et al. (2022): dense models keep
the m most important features, sparse ones keep more (the pentagon), the 2-in-1 phase diagram,
and the sticky D* = 1/2 plateau. Also: sites, the card, plots, determinism."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mechscope as ms
from mechscope import zoo
from mechscope.toys import cards
from mechscope.toys import superposition as ts
from mechscope.zoo import superposition
from mechscope.zoo.superposition import SuperpositionRecipe, SuperpositionSuite

SHIPPED = Path(superposition.__file__).parent / "weights" / "superposition"
TINY = SuperpositionRecipe(
    steps=15,
    batch_size=64,
    dim_batch_size=64,
    eval_batch=512,
    restarts=2,
    pentagon_sparsities=(0.0, 0.9),
    phase_grid=3,
    dim_features=12,
    dim_hidden=3,
    dim_instances=3,
)


@pytest.fixture(scope="module")
def model():
    return ms.load("zoo:superposition")


@pytest.fixture(scope="module")
def suite(model) -> SuperpositionSuite:
    return model.hf


def test_dense_keeps_only_the_m_most_important(suite):
    pent = suite.experiment("pentagon")
    m = pent.d_hidden
    dense = pent.feature_probability == 1.0
    assert dense.any()
    norms = ts.feature_norms(pent.W.detach())[dense]
    assert (norms[:, :m] > 0.5).all() and (norms[:, m:] < 0.5).all()
    assert torch.all(pent.importance[0, :-1] >= pent.importance[0, 1:])  # most important first


def test_sparse_represents_more_than_m_on_a_pentagon(suite):
    pent = suite.experiment("pentagon")
    W, m, n = pent.W.detach(), pent.d_hidden, pent.n_features
    sparse = (1 - pent.feature_probability) >= 0.9
    assert sparse.sum() >= 2 and (ts.represented(W[sparse]).sum(-1) > m).all()
    assert ts.represented(W[pent.feature_probability.argmin()]).all()
    for w in W[sparse]:  # a regular pentagon: 2/5 of a dimension each, neighbours 72 degrees apart
        assert ts.feature_dimensionality(w) == pytest.approx(torch.full((n,), 0.4), abs=0.05)
        angles = torch.atan2(w[1], w[0]).sort().values
        gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi]))
        assert gaps == pytest.approx(torch.full((n,), 2 * math.pi / n), abs=0.1)


def test_phase_diagram(suite):
    phase = suite.experiment("phase")
    grid = int(math.isqrt(phase.n_instances))
    phases = ts.two_in_one_phase(phase.W.detach()).view(grid, grid)  # [density, importance]
    importance, density = phase.importance[:grid, 1], phase.feature_probability[::grid]
    assert density[-1] == pytest.approx(1.0) and importance[0] < 1 < importance[-1]
    assert phases[-1, 0] == ts.PHASES.index("feature 1 only")
    assert phases[-1, -1] == ts.PHASES.index("feature 2 only")
    near_equal = importance.log().abs().argmin()
    assert phases[0, near_equal] == ts.PHASES.index("superposition (antipodal)")
    dense_rows, sparse_rows = phases[density > 0.5], phases[density < 0.05]
    antipodal = ts.PHASES.index("superposition (antipodal)")
    assert (sparse_rows == antipodal).float().mean() > (dense_rows == antipodal).float().mean() + 0.3


def test_dimensionality_sticks_at_one_half(suite):
    dim = suite.experiment("dimensionality")
    d_star = ts.dimensions_per_feature(dim.W.detach())
    lo, hi = ts.longest_plateau(d_star, 0.5, 0.1)
    assert hi - lo >= 3
    inverse_density = 1 / dim.feature_probability
    assert inverse_density[hi - 1] / inverse_density[lo] > 1.5  # a range of sparsity, not a point
    assert d_star[0] > 0.9  # dense: one feature per dimension


def test_card_matches_weights(suite):
    card = json.loads((SHIPPED / "card.json").read_text())
    measured = cards.superposition_metrics(suite)
    assert card["metrics"]["pentagon"] == measured["pentagon"]
    assert card["metrics"]["dimensionality"]["dim_star"] == measured["dimensionality"]["dim_star"]
    assert {"recipe", "metrics", "train_time_s", "software", "tolerance"} <= card.keys()
    assert card["recipe"] == json.loads(json.dumps(dataclasses.asdict(SuperpositionRecipe())))


def test_sites_and_routing(model, suite):
    x = torch.rand(4, *suite.shapes["pentagon"][:2])
    run = model.run(x, record=["pentagon.hidden.hook_out", "pentagon.relu.hook_in"])
    pent = suite.experiment("pentagon")
    hidden = run.cache["pentagon.hidden.hook_out"]
    assert hidden.shape == (4, pent.n_instances, pent.d_hidden)
    assert torch.allclose(hidden, torch.einsum("bif,ihf->bih", x, pent.W), atol=1e-6)
    assert torch.allclose(run.logits, torch.relu(run.cache["pentagon.relu.hook_in"]))
    with pytest.raises(ms.MechscopeError, match="fits no experiment"):
        model.run(torch.rand(2, 3, 7))


def test_measures_on_known_geometry():
    antipodal = torch.tensor([[[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0]]])  # [1, m=2, n=4]
    assert ts.dimensions_per_feature(antipodal).item() == pytest.approx(0.5)
    assert ts.feature_dimensionality(antipodal)[0].tolist() == pytest.approx([0.5] * 4)
    assert ts.interference(antipodal)[0].tolist() == pytest.approx([1.0] * 4)
    ignored = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert ts.feature_dimensionality(ignored).tolist() == [1.0, 1.0, 0.0]
    assert ts.represented(ignored).tolist() == [True, True, False]
    pairs = torch.tensor([[[0.9, 0.8]], [[0.9, -0.8]], [[0.0, 0.7]], [[0.1, 0.0]]])
    assert ts.two_in_one_phase(pairs).tolist() == [4, 3, 2, 0]
    assert ts.longest_plateau(torch.tensor([0.9, 0.52, 0.48, 0.3, 0.5]), 0.5, 0.1) == (1, 3)


def test_short_runs_are_deterministic(tmp_path):
    runs = {"a": TINY, "b": TINY, "c": dataclasses.replace(TINY, seed=1)}
    raw = {k: superposition.train(tmp_path / k, r, progress=False) for k, r in runs.items()}
    assert set(raw["a"]["metrics"]) == {"eval_loss"}  # the recipe writes no analysis
    assert "No feature-geometry metrics yet" in (tmp_path / "a" / "CARD.md").read_text()
    done = {k: cards.analyse_superposition(tmp_path / k) for k in runs}
    a, b, c = (load_file(tmp_path / k / "model.safetensors") for k in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["pentagon.W"], c["pentagon.W"])
    assert (
        done["a"]["metrics"] == done["b"]["metrics"]
        and done["a"]["metrics"]["eval_loss"] == raw["a"]["metrics"]["eval_loss"]
    )
    assert json.loads((tmp_path / "a" / "card.json").read_text()) == done["a"]
    assert "## pentagon" in (tmp_path / "a" / "CARD.md").read_text()
    suite = ms.load(str(tmp_path / "a")).hf
    assert (
        isinstance(suite, SuperpositionSuite)
        and done["a"]["metrics"]["pentagon"] == cards.superposition_metrics(suite)["pentagon"]
    )


def test_plots(tmp_path):
    paths = zoo.plots("superposition", tmp_path)
    assert [p.name for p in paths] == [
        "superposition_pentagon.png",
        "superposition_phase.png",
        "superposition_dimensionality.png",
    ]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
