"""Issue 23 test 4 (ViT part): Grad-CAM on a ViT's tokens puts the patch grid back in place for
any grid size (checked against captum's LayerGradCam on an explicit reshape inserted into the
model), attention rollout and its gradient-weighted form against a reference written from
the papers' formulas on hooked patterns, and Hugging Face ViTs through the same call."""

from __future__ import annotations

import copy

import pytest
import torch
from captum.attr import LayerGradCam
from torch import nn

from mechscope import vision
from mechscope.errors import MechscopeError
from mechscope.module_model import ModuleModel
from mechscope.zoo.vit_digits import DigitsViT


class Regrid(nn.Module):
    """ln1 followed by tokens -> [batch, d, rows, cols] (through `grid`) -> tokens: an identity
    that exposes the patch grid as a conv-like map for captum."""

    def __init__(self, norm: nn.Module, rows: int, cols: int):
        super().__init__()
        self.norm, self.rows, self.cols, self.grid = norm, rows, cols, nn.Identity()

    def forward(self, x):
        x = self.norm(x)
        b, t, d = x.shape
        patches = x[:, 1:].reshape(b, self.rows, self.cols, d).permute(0, 3, 1, 2)
        patches = self.grid(patches).permute(0, 2, 3, 1).reshape(b, self.rows * self.cols, d)
        return torch.cat([x[:, :1], patches], 1)


def tiny_vit(image: int, patch: int) -> DigitsViT:
    torch.manual_seed(image * 10 + patch)
    return DigitsViT(image, patch, 1, 32, 2, 4, 64, 10).eval()


@pytest.mark.parametrize(("image", "patch"), [(8, 4), (12, 2)])
def test_token_gradcam_equals_captum_on_an_explicit_grid(image, patch):
    net = tiny_vit(image, patch)
    rows = image // patch
    x = torch.randn(5, 1, image, image, generator=torch.Generator().manual_seed(1))
    target = [0, 1, 2, 3, 4]
    ours = vision.attribute(net, x, target, method="gradcam")
    assert ours.site is None and ours.layer_maps.shape == (5, rows, rows) and ours.maps.shape == (5, image, image)
    wrapped = copy.deepcopy(net)
    wrapped.blocks[-1].ln1 = Regrid(wrapped.blocks[-1].ln1, rows, rows)
    assert torch.allclose(wrapped(x), net(x), atol=1e-6)  # the regrid is an identity
    direct = LayerGradCam(wrapped, wrapped.blocks[-1].ln1.grid).attribute(
        x, target=torch.tensor(target), relu_attributions=True
    )
    assert torch.allclose(ours.layer_maps, direct[:, 0], atol=1e-6, rtol=1e-5)
    assert ours.layer_maps.abs().sum() > 0


def _hooked_patterns(net: DigitsViT, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    patterns: list[torch.Tensor] = []
    handles = [b.attn.pattern.register_forward_hook(lambda m, i, o: patterns.append(o)) for b in net.blocks]
    try:
        logits = net(x)
    finally:
        for h in handles:
            h.remove()
    return logits, patterns


def test_rollout_matches_the_formula():
    net = tiny_vit(8, 2)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    _, patterns = _hooked_patterns(net, x)
    r = torch.eye(17).repeat(3, 1, 1)
    for a in patterns:
        mixed = 0.5 * a.mean(1) + 0.5 * torch.eye(17)
        r = torch.bmm(mixed / mixed.sum(-1, keepdim=True), r)
    ours = vision.attribute(net, x, method="rollout")
    assert torch.allclose(ours.layer_maps, r[:, 0, 1:].reshape(3, 4, 4).detach(), atol=1e-6)
    assert (ours.layer_maps.flatten(1).sum(1) < 1).all()  # the class token keeps the rest


def test_gradient_rollout_matches_the_formula():
    net = tiny_vit(8, 2)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    logits, patterns = _hooked_patterns(net, x)
    grads = torch.autograd.grad(logits[:, 7].sum(), patterns)
    r = torch.eye(17).repeat(3, 1, 1)
    for a, g in zip(patterns, grads):
        r = r + torch.bmm((g * a).clamp_min(0).mean(1), r)
    ours = vision.attribute(net, x, 7, method="grad_rollout")
    assert torch.allclose(ours.layer_maps, r[:, 0, 1:].reshape(3, 4, 4).detach(), atol=1e-6)


def test_uniform_attention_rolls_out_flat():
    net = tiny_vit(8, 2)
    with torch.no_grad():
        for block in net.blocks:
            block.attn.qkv.weight.zero_(), block.attn.qkv.bias.zero_()
    maps = vision.attribute(net, torch.randn(2, 1, 8, 8), method="rollout").layer_maps
    assert torch.allclose(maps, maps[:, :1, :1].expand_as(maps), atol=1e-7)


def test_hugging_face_vit_gradcam():
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, num_labels=5,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = ViTForImageClassification(config).eval()
    x = torch.randn(2, 3, 16, 16)
    result = vision.attribute(hf, x, [1, 4], method="gradcam")
    assert result.layer_maps.shape == (2, 4, 4) and result.maps.shape == (2, 16, 16)
    assert result.layer_maps.abs().sum() > 0
    ig = vision.attribute(ModuleModel(hf), x, [1, 4], method="ig")
    assert ig.completeness.max() <= 1e-2
    with pytest.raises(MechscopeError, match="3-channel"):
        vision.attribute(hf, torch.randn(2, 1, 16, 16), method="gradcam")
    # rollout from the model's own attentions (captum has none for ViTs, pytorch/captum#916)
    hf.config._attn_implementation = "eager"
    out = hf(x, output_attentions=True)
    grads = torch.autograd.grad(out.logits[:, 2].sum(), out.attentions)
    plain, weighted = torch.eye(17).repeat(2, 1, 1), torch.eye(17).repeat(2, 1, 1)
    for a, g in zip(out.attentions, grads):
        mixed = 0.5 * a.mean(1) + 0.5 * torch.eye(17)
        plain = torch.bmm(mixed / mixed.sum(-1, keepdim=True), plain)
        weighted = weighted + torch.bmm((g * a).clamp_min(0).mean(1), weighted)
    hf.config._attn_implementation = "sdpa"
    rollout = vision.attribute(hf, x, method="rollout")
    assert torch.allclose(rollout.layer_maps, plain[:, 0, 1:].reshape(2, 4, 4).detach(), atol=1e-6)
    grad_rollout = vision.attribute(hf, x, 2, method="grad_rollout")
    assert torch.allclose(grad_rollout.layer_maps, weighted[:, 0, 1:].reshape(2, 4, 4).detach(), atol=1e-6)
    assert hf.config._attn_implementation == "sdpa"  # switched for the call only


def test_layers_of_vits_from_the_top_down():
    from transformers import ViTConfig, ViTForImageClassification

    from mechscope.vision.randomise import top_down

    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_labels=5)  # fmt: skip
    assert top_down(ViTForImageClassification(config)) == [
        "classifier", "vit.layernorm", "vit.layers.1", "vit.layers.0", "vit.embeddings",
    ]  # fmt: skip
    assert top_down(tiny_vit(8, 2)) == ["head", "norm", "blocks.1", "blocks.0", "patch_embed", ":params"]


def test_plain_rollout_ignores_the_classifier_head():
    """Rollout reads attention only: randomising the head and final norm leaves its maps exactly
    as they were (Spearman 1), so it fails the top-layer test; its gradient-weighted form and
    Grad-CAM move at once."""
    import mechscope as ms
    from mechscope.vision.images import read_images

    model, x = ms.load("zoo:vit-digits"), read_images("digits:0-5")
    plain = vision.sanity(model, "rollout", x, deletion=False)
    assert plain.stages[:2] == ["head", "norm"] and plain.stages[-1] == "root params"
    assert torch.allclose(plain.spearman[:2], torch.ones(2, 6), atol=1e-6)
    assert plain.failed == ["top-layer randomisation"]
    for method in ("grad_rollout", "gradcam"):
        report = vision.sanity(model, method, x, deletion=False)
        assert report.ok("top-layer randomisation") and report.ok("randomisation"), (method, report.lines())
