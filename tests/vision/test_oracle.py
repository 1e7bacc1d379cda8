"""Issue 23 test 1: the wrapper is captum. Grad-CAM on zoo:digits at its last conv site equals
captum's LayerGradCam + ReLU called directly (exactly), other methods equal their direct
captum calls, and Integrated Gradients' completeness gap is within 1e-2 of the output
difference at the default 50 steps."""

from __future__ import annotations

import pytest
import torch
from captum.attr import (
    GuidedGradCam,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    LayerGradientXActivation,
    Occlusion,
)

from mechscope import vision
from mechscope.errors import MechscopeError


def test_gradcam_equals_captum_layer_gradcam_with_relu(digits_model, images):
    net = digits_model.hf
    target = torch.arange(8)
    ours = vision.attribute(digits_model, images, target.tolist(), method="gradcam", site="conv2.hook_out")
    direct = LayerGradCam(net, net.conv2).attribute(images, target=target, relu_attributions=True)
    assert torch.equal(ours.layer_maps, direct[:, 0])
    up = LayerAttribution.interpolate(direct, (8, 8), interpolate_mode="bilinear")
    assert torch.equal(ours.maps, up[:, 0])
    assert (ours.maps >= 0).all() and ours.maps.abs().sum() > 0
    # the default site of a CNN is its last convolution's output
    assert torch.equal(vision.attribute(digits_model, images, target.tolist()).maps, ours.maps)


def test_gradcam_at_a_site_input_and_a_coarser_map(digits_model, images):
    net = digits_model.hf
    with pytest.raises(MechscopeError, match="spatial map"):
        vision.attribute(digits_model, images, 3, method="gradcam", site="fc.hook_in")  # flattened
    same = vision.attribute(digits_model, images, 3, method="gradcam", site="flatten.hook_in")
    ours = vision.attribute(digits_model, images, 3, method="gradcam", site="pool.hook_out", upsample="nearest")
    direct = LayerGradCam(net, net.pool).attribute(images, target=3, relu_attributions=True)
    assert ours.layer_maps.shape == (8, 4, 4) and torch.equal(ours.layer_maps, direct[:, 0])
    assert torch.equal(ours.maps, direct[:, 0].repeat_interleave(2, 1).repeat_interleave(2, 2))
    assert torch.equal(same.layer_maps, ours.layer_maps)  # the pool's output is the flatten's input


def test_ig_completeness_and_captum_equality(digits_model, images):
    result = vision.attribute(digits_model, images, list(range(8)), method="ig")
    with torch.no_grad():
        logits = digits_model.hf(torch.cat([images, torch.zeros_like(images)]))
    diff = logits[:8].gather(1, torch.arange(8)[:, None])[:, 0] - logits[8:].gather(1, torch.arange(8)[:, None])[:, 0]
    assert torch.allclose(result.output_diff, diff, atol=1e-5)
    gap = (result.attributions.flatten(1).sum(1) - diff).abs() / diff.abs()
    assert gap.max() <= 1e-2, gap
    assert torch.allclose(result.completeness, gap, atol=1e-5)
    direct = IntegratedGradients(digits_model.hf).attribute(
        images, baselines=torch.zeros_like(images), target=torch.arange(8), n_steps=50
    )
    assert torch.allclose(result.attributions, direct, atol=1e-6)


def test_guided_gradcam_hirescam_and_occlusion_equal_captum(digits_model, images):
    net, target = digits_model.hf, torch.arange(8)
    guided = vision.attribute(digits_model, images, target.tolist(), method="guided_gradcam")
    direct = GuidedGradCam(net, net.conv2).attribute(images, target=target)
    assert torch.allclose(guided.attributions, direct, atol=1e-7)
    hires = vision.attribute(digits_model, images, target.tolist(), method="hirescam")
    direct = LayerGradientXActivation(net, net.conv2).attribute(images, target=target).sum(1).clamp_min(0)
    assert torch.allclose(hires.layer_maps, direct, atol=1e-7)
    occl = vision.attribute(digits_model, images, target.tolist(), method="occlusion", window=2, stride=1)
    direct = Occlusion(net).attribute(images, sliding_window_shapes=(1, 2, 2), strides=(1, 1, 1), target=target)
    assert torch.allclose(occl.attributions, direct, atol=1e-6)


def test_random_methods_are_repeatable(digits_model, images):
    for method in ("gradient_shap", "kernel_shap"):
        a = vision.attribute(digits_model, images[:2], method=method, n_samples=32, seed=1)
        b = vision.attribute(digits_model, images[:2], method=method, n_samples=32, seed=1)
        assert torch.equal(a.maps, b.maps), method


def test_held_edits_change_the_attribution(digits_model, images):
    """Attribution explains the model as edited: doubling relu2's output doubles the logits
    up to fc's bias, so IG's attributions double exactly (the baseline's logit moves too)."""
    import mechscope as ms

    plain = vision.attribute(digits_model, images, 0, method="ig")
    with digits_model.edit(ms.edits.scale("relu2.hook_out", 2.0)):
        edited = vision.attribute(digits_model, images, 0, method="ig")
    assert torch.allclose(edited.attributions, 2 * plain.attributions, rtol=1e-4, atol=1e-6)
