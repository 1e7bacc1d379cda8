"""Issue 23 test 2: the sanity checks bite. On zoo:digits, Grad-CAM's and IG's maps decorrelate
when the weights are randomised from the top down (Spearman < 0.5 after the last stage), and
Grad-CAM's deletion AUC beats random order; an input-only "attribution" (an edge detector
that never looks at the model) is reported as failing the randomisation test."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mechscope import vision
from mechscope.vision import randomise


def edge_detector(model, images, target):
    """|Sobel| of the input: the same map whatever the model's weights."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gray = images.mean(1, keepdim=True)
    gx, gy = F.conv2d(gray, kx, padding=1), F.conv2d(gray, kx.transpose(-1, -2), padding=1)
    return (gx**2 + gy**2).sqrt()[:, 0]


def test_stages_go_from_the_top_layer_down(digits_model):
    assert randomise.top_down(digits_model.hf) == ["fc", "conv2", "conv1"]


def test_gradcam_passes_and_decorrelates(digits_model, images):
    report = vision.sanity(digits_model, "gradcam", images)
    assert report.stages == ["fc", "conv2", "conv1"]
    assert report.spearman.shape == (3, 8) and report.cascade_maps.shape == (4, 8, 8, 8)
    assert report.spearman[-1].mean() < 0.5
    assert report.ok("randomisation") and report.ok("deletion") and report.ok("insertion")
    from mechscope.vision.faithfulness import auc

    assert auc(report.deletion_curve).mean() < auc(report.deletion_random).mean()
    # the curves start at the intact image and end at the baseline
    probs = digits_model.hf(images).softmax(-1).gather(1, report.target[:, None])[:, 0]
    assert torch.allclose(report.deletion_curve[:, 0], probs.detach(), atol=1e-6)
    assert torch.allclose(report.insertion_curve[:, -1], probs.detach(), atol=1e-6)


def test_ig_passes_with_completeness(digits_model, images):
    report = vision.sanity(digits_model, "ig", images, deletion=False)
    assert report.spearman[-1].mean() < 0.5 and report.ok("randomisation")
    assert report.ok("completeness") and report.completeness.max() <= 1e-2
    assert report.passed and report.failed == []


def test_an_input_only_edge_detector_fails(digits_model, images):
    report = vision.sanity(digits_model, edge_detector, images, deletion=False)
    assert torch.allclose(report.spearman, torch.ones_like(report.spearman))
    assert not report.ok("randomisation") and not report.passed
    assert report.failed == ["top-layer randomisation", "randomisation"]
    assert any(line.startswith("FAIL randomisation") for line in report.lines())


def test_label_randomisation(digits_model, digits_split, images):
    x, y = digits_split.x_train[:256], digits_split.y_train[:256]
    report = vision.sanity(digits_model, "gradcam", images, randomisation=False, deletion=False, labels=(x, y))
    assert report.label_maps.shape == (8, 8, 8) and report.label_spearman.shape == (8,)
    assert report.label_spearman.mean() < 0.5 and report.ok("labels")
    fixed = vision.sanity(digits_model, edge_detector, images, randomisation=False, deletion=False, labels=(x, y))
    assert not fixed.ok("labels")


def test_batched_equals_one_image_per_call(digits_model, images):
    batched = vision.sanity(digits_model, "gradcam", images[:4], deletion=False)
    single = vision.sanity(digits_model, "gradcam", images[:4], deletion=False, batch_size=1)
    assert torch.allclose(batched.cascade_maps, single.cascade_maps, atol=1e-5)
    assert torch.allclose(batched.spearman, single.spearman, atol=1e-4)


def test_report_round_trips(digits_model, images, tmp_path):
    report = vision.sanity(digits_model, "gradcam", images[:3], n_random=2)
    loaded = vision.SanityReport.load(report.save(tmp_path / "sanity"))
    assert loaded.checks == report.checks and torch.equal(loaded.spearman, report.spearman)
    assert torch.equal(loaded.deletion_curve, report.deletion_curve) and loaded.label_maps is None


def test_rank_correlation_equals_scipy_with_ties():
    from scipy.stats import spearmanr

    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (6, 40), generator=gen).float()  # many ties
    b = a + torch.randint(0, 3, (6, 40), generator=gen).float()
    ours = vision.rank_correlation(a, b)
    expected = torch.tensor([spearmanr(x, y).statistic for x, y in zip(a.numpy(), b.numpy())])
    assert torch.allclose(ours.double(), expected.double(), atol=1e-6)
    assert vision.rank_correlation(torch.ones(1, 9), a[:1, :9]).item() == 0.0  # a constant map ranks nothing
    assert vision.rank_correlation(a[:1], -a[:1]).item() == pytest.approx(-1.0)
