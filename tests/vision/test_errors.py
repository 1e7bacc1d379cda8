"""Issue 23 test 7 (vision part): bad input fails in one line that says what to do."""

from __future__ import annotations

import pytest
import torch

from mechscope import vision
from mechscope.errors import MechscopeError


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (torch.randn(8, 8), {}, r"must be \[batch, channels, height, width\]"),
        (torch.randn(2, 3, 8, 8), {}, "reads 1-channel images, got 3 channels"),
        (torch.randn(2, 1, 16, 16), {}, r"cannot read images of shape \(1, 16, 16\)"),
        (torch.randint(0, 16, (2, 1, 8, 8)), {}, "floating point"),
        ([[0.0] * 8] * 8, {}, "must be a tensor"),
        (
            torch.randn(2, 1, 8, 8),
            {"target": 10},
            r"target class 10 is out of range: this model has 10 classes \(0-9\)",
        ),
        (torch.randn(2, 1, 8, 8), {"target": -1}, "target class -1 is out of range"),
        (torch.randn(2, 1, 8, 8), {"target": [1, 2, 3]}, "3 targets for 2 images"),
        (torch.randn(2, 1, 8, 8), {"target": "cat"}, "target must be a class index"),
        (torch.randn(2, 1, 8, 8), {"method": "smoothgrad"}, "unknown attribution method 'smoothgrad'"),
        (torch.randn(2, 1, 8, 8), {"method": "rollout"}, "attention-probability sites"),
        (torch.randn(2, 1, 8, 8), {"site": "conv9.hook_out"}, "unknown site 'conv9.hook_out'"),
        (torch.randn(2, 1, 8, 8), {"method": "kernel_shap", "mask": "blobs"}, "unknown feature mask 'blobs'"),
        (torch.randn(2, 1, 8, 8), {"method": "ig", "baseline": torch.zeros(3, 3)}, "does not fit images"),
    ],
)
def test_bad_attribute_input_is_one_line(digits_model, images, kwargs, message):
    with pytest.raises(MechscopeError, match=message) as err:
        vision.attribute(digits_model, images, **kwargs)
    assert "\n" not in str(err.value)


def test_bad_model_and_sanity_input(digits_model):
    with pytest.raises(MechscopeError, match="ModuleModel or a torch module"):
        vision.attribute("zoo:digits", torch.randn(1, 1, 8, 8))
    with pytest.raises(MechscopeError, match="sanity needs inputs"):
        vision.sanity(digits_model, "gradcam")
    with pytest.raises(MechscopeError, match=r"custom method must return maps \(2, 8, 8\)"):
        vision.sanity(digits_model, lambda m, x, t: x, torch.randn(2, 1, 8, 8))
    report = vision.sanity(digits_model, "gradcam", torch.randn(2, 1, 8, 8), deletion=False)
    with pytest.raises(MechscopeError, match="no 'labels' check ran"):
        report.ok("labels")
    with pytest.raises(MechscopeError, match="no deletion/insertion curves"):
        report.plot_curves()
