"""Probes on synthetic activations: a concept planted in one layer, control tasks,
the frozen artefact (save/load, direction), and the one-line refusals."""

from __future__ import annotations

import pytest
import torch

from mechscope.concepts import Probe, ProbeSweep, control_labels, from_tensors, probe, probe_layers
from mechscope.errors import MechscopeError

FAST = dict(epochs=2, min_steps=60, batch_size=256, hidden=32, l2=(1e-3, 1e-1))


def planted(n: int = 2400, d: int = 24, seed: int = 0):
    """Four layers of noise; the binary label is added along one direction at layer 2 only.
    Labels are drawn per row, independent of the word type (groups)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    acts = [torch.randn(n, d, generator=g) for _ in range(4)]
    u = torch.randn(d, generator=g)
    acts[2] = acts[2] + 3.0 * (2 * y[:, None].float() - 1) * (u / u.norm())
    groups = torch.randint(0, 200, (n,), generator=g)
    return from_tensors(acts, y, groups=groups, texts=torch.arange(n) // 12), u / u.norm()


@pytest.fixture(scope="module")
def sweep():
    data, _ = planted()
    return probe_layers(data, **FAST)


def test_planted_layer_peaks_and_is_selective(sweep):
    acc, sel = sweep.accuracy, sweep.selectivity
    assert sel is not None
    assert int(acc.argmax()) == 2 and float(acc[2]) >= 0.95
    others = acc[[0, 1, 3]]
    assert float((others - 0.5).abs().max()) < 0.07, others  # near chance elsewhere
    assert float(sel[2]) > 0.3
    assert float(sel[[0, 1, 3]].abs().max()) < 0.08  # a random-feature layer is not selective
    assert sweep.best.site == "layer2"


def test_sweep_plot_save_load(sweep, tmp_path):
    assert sweep.plot().axes
    again = ProbeSweep.load(sweep.save(tmp_path / "sweep"))
    assert torch.equal(again.accuracy, sweep.accuracy)
    assert again.probes[2].metrics["selectivity"] == pytest.approx(float(sweep.selectivity[2]))


def test_probe_artefact_round_trip_and_direction(sweep, tmp_path):
    data, u = planted()
    p = sweep.probes[2]
    again = Probe.load(p.save(tmp_path / "p"))
    x = data.x("layer2")
    assert torch.equal(again.predict(x), p.predict(x))
    torch.testing.assert_close(again.proba(x), p.proba(x))
    # the probe found the planted direction (a random one: |cos| ~ 0.2 in 24 dimensions)
    assert float(p.direction("1") @ u) > 0.8
    assert float(p.direction("0") @ u) < -0.8
    # moving along the direction flips the prediction toward class 1
    assert float(p.predict(x + 10 * p.direction("1")).float().mean()) > 0.99


@pytest.mark.parametrize("kind", ["linear", "mlp1"])
def test_other_probe_kinds_find_the_planted_layer(kind):
    data, _ = planted(n=1200)
    p = probe(data, "layer2", kind=kind, **FAST)
    assert p.metrics["test_accuracy"] >= 0.95
    assert probe(data, "layer0", kind=kind, **FAST).metrics["test_accuracy"] < 0.62


def test_multiclass_probe():
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 3, (1500,), generator=g)
    x = torch.randn(1500, 16, generator=g) + 4 * torch.nn.functional.one_hot(y, 16).float()
    p = probe(from_tensors({"s": x}, [["a", "b", "c"][v] for v in y.tolist()]), **FAST)
    assert p.classes == ("a", "b", "c") and p.metrics["test_accuracy"] > 0.95
    assert p.proba(x[:4]).shape == (4, 3)


def test_control_labels_are_fixed_per_word_type():
    groups = torch.tensor([5, 3, 5, 9, 3, 5] * 50)
    labels = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(0))
    fake = control_labels(groups, labels, 3)
    for t in groups.unique():
        assert len(fake[groups == t].unique()) == 1


def test_bad_input_is_refused_in_one_line():
    x = torch.randn(10, 4)
    with pytest.raises(MechscopeError, match="10 labels|one label per row"):
        from_tensors({"s": x}, [0, 1] * 4)
    with pytest.raises(MechscopeError, match="at least two classes"):
        probe(from_tensors({"s": x}, [1] * 10))
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(MechscopeError, match="NaN"):
        from_tensors({"s": bad}, [0, 1] * 5)
    with pytest.raises(MechscopeError, match="probe kind"):
        probe(from_tensors({"s": x}, [0, 1] * 5), kind="svm")
    data, _ = planted(n=300)
    p = probe(data, "layer2", **FAST)
    with pytest.raises(MechscopeError, match="reads 24 features"):
        p.predict(torch.randn(3, 7))
    with pytest.raises(MechscopeError, match="no activations at"):
        probe(data, "layer9")


def test_saving_is_whole_and_never_replaces_other_files(sweep, tmp_path):
    p = sweep.probes[2]
    p.save(tmp_path / "p")
    p.save(tmp_path / "p")  # a saved artefact may be replaced
    assert sorted(f.name for f in (tmp_path / "p").iterdir()) == ["cfg.json", "metrics.json", "probe.safetensors"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(MechscopeError, match="holds other files"):
        p.save(other)
    assert (other / "notes.txt").read_text() == "keep me"
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no staging left behind


@pytest.mark.parametrize(
    "kind,c,n_classes", [("logistic", 1, 2), ("logistic", 4, 4), ("linear", 1, 2), ("linear", 3, 3)]
)
def test_closed_form_gradients_equal_autograd(kind, c, n_classes):
    from mechscope.concepts.heads import _linear_grads, forward, row_loss

    g = torch.Generator().manual_seed(0)
    m, d, b = 3, 5, 7
    params = {"weight": torch.randn(m, d, c, generator=g), "bias": torch.randn(m, c, generator=g)}
    for p in params.values():
        p.requires_grad_(True)
    z, y = torch.randn(b, d, generator=g), torch.randint(0, n_classes, (b,), generator=g)
    weight, l2 = torch.rand(m, b, generator=g), torch.rand(m, generator=g)
    per = (row_loss(kind, forward(params, z), y) * weight).sum(1)
    (per + 0.5 * l2 * (params["weight"] ** 2).flatten(1).sum(1)).sum().backward()
    expected = {k: v.grad.clone() for k, v in params.items()}
    _linear_grads(kind, params, z, y, weight, l2)
    for k in params:
        torch.testing.assert_close(params[k].grad, expected[k], atol=1e-6, rtol=1e-5)
