"""AUROC, Brier, ECE and the reliability diagram against torchmetrics and scikit-learn."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import brier_score_loss, roc_auc_score
from torchmetrics.classification import BinaryAUROC, BinaryCalibrationError

from mechscope.concepts import auroc, brier, ece, reliability
from mechscope.concepts.calibration import apply_calibrator, fit_calibrator
from mechscope.errors import MechscopeError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_torchmetrics_and_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(2000, generator=g, dtype=torch.float64)
    y = (torch.rand(2000, generator=g, dtype=torch.float64) < p**2).long()
    assert auroc(p, y) == pytest.approx(roc_auc_score(y.numpy(), p.numpy()), abs=1e-6)
    assert auroc(p, y) == pytest.approx(float(BinaryAUROC()(p, y)), abs=1e-6)
    assert brier(p, y) == pytest.approx(brier_score_loss(y.numpy(), p.numpy()), abs=1e-6)
    ce = BinaryCalibrationError(n_bins=15, norm="l1")(p.float(), y)
    assert ece(p.float(), y) == pytest.approx(float(ce), abs=1e-6)
    tied = (p * 8).round() / 8  # ties: average ranks, as sklearn
    assert auroc(tied, y) == pytest.approx(roc_auc_score(y.numpy(), tied.numpy()), abs=1e-6)


def test_reliability_bins_sum_to_the_sample_count():
    g = torch.Generator().manual_seed(3)
    p = torch.rand(777, generator=g)
    p[:5] = 1.0  # p = 1 falls in the last bin
    y = (torch.rand(777, generator=g) < p).long()
    r = reliability(p, y)
    assert len(r.count) == 15 and float(r.count.sum()) == 777
    assert r.ece == pytest.approx(ece(p, y))
    fig = r.plot()
    assert fig.axes


def test_calibration_fixes_an_overconfident_score():
    g = torch.Generator().manual_seed(4)
    truth = torch.rand(4000, generator=g, dtype=torch.float64)
    y = (torch.rand(4000, generator=g, dtype=torch.float64) < truth).long()
    logit = torch.log(truth) - torch.log1p(-truth)
    over = torch.sigmoid(3 * logit)  # three times too confident
    cal, test = slice(0, 2000), slice(2000, None)
    for kind in ("temperature", "isotonic"):
        params = fit_calibrator(over[cal], y[cal], kind)
        fixed = apply_calibrator(over[test], params)
        assert ece(fixed, y[test]) < ece(over[test], y[test]) - 0.05, kind
    assert float(fit_calibrator(over[cal], y[cal], "temperature")["temperature"]) == pytest.approx(3, rel=0.2)


def test_bad_metric_input():
    with pytest.raises(MechscopeError, match="one probability per outcome"):
        brier(torch.rand(3), torch.ones(4))
    with pytest.raises(MechscopeError, match="both outcomes"):
        auroc(torch.rand(3), torch.ones(3))
    with pytest.raises(MechscopeError, match=r"\[0, 1\]"):
        ece(torch.tensor([0.5, float("nan")]), torch.tensor([0, 1]))
    with pytest.raises(MechscopeError, match="0 or 1"):
        brier(torch.tensor([0.5, 0.5]), torch.tensor([0, 2]))
