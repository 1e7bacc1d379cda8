"""LEACE erasure against the `concept-erasure` package on given activations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from concept_erasure import LeaceFitter

from mechscope.concepts import Eraser, fit_on, from_tensors, probe
from mechscope.errors import MechscopeError


def concept_data(n: int, seed: int, d: int = 16):
    """n draws (seeded by `seed`) of one distribution: three classes with different means
    under a fixed correlated noise."""
    fixed = torch.Generator().manual_seed(99)
    mix = torch.randn(d, d, generator=fixed, dtype=torch.float64)
    means = torch.randn(3, d, generator=fixed, dtype=torch.float64) * 2
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + means[y]
    return x, y


def test_eraser_equals_the_package_and_erases():
    x, y = concept_data(3000, 0)
    data = from_tensors({"s": x}, y)
    ours = fit_on(data, batch=700)  # streamed in batches; the oracle sees everything at once
    theirs = LeaceFitter.fit(x, F.one_hot(y, 3).double()).eraser
    erased = ours("s", x)
    assert erased.dtype == torch.float64
    assert float((erased - theirs(x)).abs().max()) <= 1e-10
    # in-sample: every class has the same mean after erasure, so the cross-covariance is zero
    z = F.one_hot(y, 3).double()
    cross = (erased - erased.mean(0)).T @ (z - z.mean(0)) / len(x)
    assert float(cross.abs().max()) <= 1e-5
    # a fresh logistic probe on held-out data of the same distribution scores at most chance
    hx, hy = concept_data(3000, 1)
    before = probe(from_tensors({"s": hx}, hy), epochs=2, min_steps=60, batch_size=256, l2=(1e-3, 1e-1))
    after = probe(from_tensors({"s": ours("s", hx)}, hy), epochs=2, min_steps=60, batch_size=256, l2=(1e-3, 1e-1))
    assert before.metrics["test_accuracy"] > 0.8
    assert after.metrics["test_accuracy"] <= after.metrics["majority"] + 0.02


def test_orth_variant_and_save_load(tmp_path):
    x, y = concept_data(1000, 2)
    data = from_tensors({"s": x}, y)
    ours = fit_on(data, method="orth")
    theirs = LeaceFitter.fit(x, F.one_hot(y, 3).double(), method="orth").eraser
    assert float((ours("s", x) - theirs(x)).abs().max()) <= 1e-10
    again = Eraser.load(ours.save(tmp_path / "e"))
    assert torch.equal(again("s", x), ours("s", x))


def test_eraser_refusals():
    x, y = concept_data(200, 3)
    e = fit_on(from_tensors({"s": x}, y))
    with pytest.raises(MechscopeError, match="reads width 16"):
        e("s", torch.randn(4, 8, dtype=torch.float64))
    with pytest.raises(MechscopeError, match="no part for"):
        e("t", x)
    with pytest.raises(MechscopeError, match="nothing to erase"):
        fit_on(from_tensors({"s": x}, [0] * 200))
    with pytest.raises(MechscopeError, match="erasure method"):
        fit_on(from_tensors({"s": x}, y), method="quadratic")
