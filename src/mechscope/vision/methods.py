"""The attribution methods, each a thin call into captum (or, for ViT tokens and attention
rollout, `vit.py`): one function per method taking a `Request`, returning `Maps`.

Every map is [batch, height, width] in input pixels; raw per-channel attributions are kept
where the method has them. Random methods (GradientSHAP, KernelSHAP, LIME) draw from a
generator seeded by `Request.seed`, so a call is repeatable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
import torch
from captum.attr import (
    GradientShap,
    GuidedGradCam,
    IntegratedGradients,
    KernelShap,
    LayerAttribution,
    LayerGradCam,
    LayerGradientXActivation,
    Lime,
    Occlusion,
    Saliency,
)
from torch import Tensor, nn

from ..errors import MechscopeError
from ..module_model import ModuleModel
from . import vit
from .inputs import Forward, LogitsModule, structural
from .masks import default_patch, feature_mask

DEFAULT_SITES = {
    "vit": ("vit.layers.{last}.layernorm_before.hook_out", "vit.encoder.layer.{last}.layernorm_before.hook_out"),
    "deit": ("deit.layers.{last}.layernorm_before.hook_out", "deit.encoder.layer.{last}.layernorm_before.hook_out"),
}
"""Hugging Face `config.model_type` -> Grad-CAM's default site, the last block's first norm
(module paths of transformers 5, then of 4)."""


@dataclass(frozen=True)
class Request:
    """One attribution call, checked: the model, images [batch, C, H, W], targets [batch]."""

    model: ModuleModel
    images: Tensor
    target: Tensor
    forward: Forward
    site: str | None = None
    steps: int = 50
    baseline: Tensor | float | None = None
    n_samples: int | None = None
    mask: str = "patch"
    patch: int | None = None
    window: int | None = None
    stride: int = 1
    upsample: str = "bilinear"
    internal_batch_size: int | None = None
    seed: int = 0
    options: dict = field(default_factory=dict)

    def base(self) -> Tensor:
        """The baseline images [batch, C, H, W] (zeros unless given)."""
        if self.baseline is None:
            return torch.zeros_like(self.images)
        if isinstance(self.baseline, (int, float)):
            return torch.full_like(self.images, float(self.baseline))
        try:
            return self.baseline.to(self.images).expand_as(self.images).contiguous()
        except RuntimeError:
            raise MechscopeError(
                f"baseline of shape {tuple(self.baseline.shape)} does not fit images {tuple(self.images.shape)}"
            ) from None


class Maps(NamedTuple):
    maps: Tensor
    """[batch, height, width]."""
    attributions: Tensor | None = None
    """Per-channel attributions [batch, C, H, W] where the method has them."""
    delta: Tensor | None = None
    """Completeness gap [batch]: sum of attributions minus the output difference (IG, SHAP)."""
    output_diff: Tensor | None = None
    """f(input) - f(baseline) of the target logit [batch]."""
    layer_maps: Tensor | None = None
    """The map at the site's own resolution (Grad-CAM, rollout)."""


def default_site(model: ModuleModel) -> str:
    """Grad-CAM's site: the model's own `gradcam_site`, a known ViT family's last block, or
    the output of the last convolution."""
    named = getattr(model.hf, "gradcam_site", None)
    if isinstance(named, str):
        return named
    config = getattr(model.hf, "config", None)
    if config is not None and getattr(config, "model_type", None) in DEFAULT_SITES:
        names = {site.name for site in model.table}
        for pattern in DEFAULT_SITES[config.model_type]:
            if pattern.format(last=config.num_hidden_layers - 1) in names:
                return pattern.format(last=config.num_hidden_layers - 1)
    convs = structural(model.hf, "convs", lambda m: [p for p, sub in m.named_modules() if isinstance(sub, nn.Conv2d)])
    if not convs:
        raise MechscopeError(f"{model.name} has no convolution: name Grad-CAM's site with site=")
    return f"{convs[-1]}.hook_out"


def layer_of(model: ModuleModel, site: str) -> tuple[nn.Module, bool]:
    """The module behind a site and whether the site is its input."""
    found = model.table[site]
    return model.hf.get_submodule(found.module), found.boundary == "in"


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's and numpy's global generators (captum draws from both) for the block,
    restoring both afterwards, so a random method is repeatable and leaves no trace."""
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(state)


def _channel_sum(attributions: Tensor) -> Tensor:
    return attributions.sum(1)


def _targets(req: Request) -> Tensor:
    return req.target.to(req.images.device)


def gradcam(req: Request) -> Maps:
    """Grad-CAM (Selvaraju et al. 2017): ReLU of the gradient-weighted channels at `site`."""
    site = req.site or default_site(req.model)
    layer, to_input = layer_of(req.model, site)
    if vit.patch_size(req.model) is not None and not isinstance(layer, nn.Conv2d):
        grid = vit.token_gradcam(req.model, req.images, req.target, site)
        return Maps(vit.upsample(grid, req.images.shape[-2:], req.upsample), layer_maps=grid)
    cam = LayerGradCam(req.forward, layer).attribute(
        req.images, target=_targets(req), relu_attributions=True, attribute_to_layer_input=to_input
    )
    if cam.dim() != 4:
        raise MechscopeError(f"Grad-CAM needs a site with a spatial map [batch, C, h, w]; {site} has {cam.dim()} dims")
    up = LayerAttribution.interpolate(cam, tuple(req.images.shape[-2:]), interpolate_mode=req.upsample)
    return Maps(up[:, 0].detach(), layer_maps=cam[:, 0].detach())


def hirescam(req: Request) -> Maps:
    """HiResCAM (Draelos & Carin 2020): ReLU(sum_c dScore/dA_c * A_c) element-wise, not with
    Grad-CAM's spatially averaged weights, so it marks only places the score depends on."""
    if vit.patch_size(req.model) is not None:
        raise MechscopeError("hirescam reads a conv site; for a ViT use gradcam (patch grid) or grad_rollout")
    site = req.site or default_site(req.model)
    layer, to_input = layer_of(req.model, site)
    attr = LayerGradientXActivation(req.forward, layer).attribute(
        req.images, target=_targets(req), attribute_to_layer_input=to_input
    )
    if attr.dim() != 4:
        raise MechscopeError(f"HiResCAM needs a site with a spatial map [batch, C, h, w]; {site} has {attr.dim()} dims")
    cam = attr.sum(1, keepdim=True).clamp_min(0)
    up = LayerAttribution.interpolate(cam, tuple(req.images.shape[-2:]), interpolate_mode=req.upsample)
    return Maps(up[:, 0].detach(), layer_maps=cam[:, 0].detach())


def guided_gradcam(req: Request) -> Maps:
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM (captum)."""
    if vit.patch_size(req.model) is not None:
        raise MechscopeError("guided Grad-CAM needs a CNN with ReLU modules; for a ViT use gradcam or grad_rollout")
    site = req.site or default_site(req.model)
    layer, to_input = layer_of(req.model, site)
    method = GuidedGradCam(LogitsModule(req.forward, req.model.hf), layer)
    attr = method.attribute(req.images, target=_targets(req), attribute_to_layer_input=to_input)
    return Maps(_channel_sum(attr).detach(), attr.detach())


def _output_diff(attr: Tensor, delta: Tensor) -> Tensor:
    """f(input) - f(baseline) per image, from captum's gap (delta = sum(attr) - that
    difference): no second forward pass."""
    return (attr.detach().flatten(1).sum(1) - delta.detach()).cpu()


def integrated_gradients(req: Request) -> Maps:
    """Integrated Gradients (Sundararajan et al. 2017), Gauss-Legendre, with the completeness gap."""
    base = req.base()
    attr, delta = IntegratedGradients(req.forward).attribute(
        req.images,
        baselines=base,
        target=_targets(req),
        n_steps=req.steps,
        internal_batch_size=req.internal_batch_size,
        return_convergence_delta=True,
    )
    return Maps(_channel_sum(attr).detach(), attr.detach(), delta.detach().cpu(), _output_diff(attr, delta))


def saliency(req: Request) -> Maps:
    """Vanilla gradient magnitude (Simonyan et al. 2014)."""
    attr = Saliency(req.forward).attribute(req.images, target=_targets(req), abs=True)
    return Maps(attr.amax(1).detach(), attr.detach())


def gradient_shap(req: Request) -> Maps:
    """GradientSHAP: expected gradients over references (the baseline and the batch itself)."""
    references = torch.cat([req.base()[:1], req.images])
    with seeded(req.seed):
        attr, delta = GradientShap(req.forward).attribute(
            req.images,
            baselines=references,
            target=_targets(req),
            n_samples=req.n_samples or 32,
            stdevs=float(req.options.get("stdevs", 0.0)),
            return_convergence_delta=True,
        )
    delta = delta.detach().view(len(req.images), -1).mean(1).cpu()  # one gap per image, over its samples
    return Maps(_channel_sum(attr).detach(), attr.detach(), delta)


def _perturbation(req: Request, make: Callable[[Forward], KernelShap | Lime]) -> Maps:
    """KernelSHAP / LIME, one image at a time (captum fits one surrogate per example)."""
    masks = feature_mask(req.images, req.mask, req.patch, int(req.options.get("n_segments", 16)))
    base, n = req.base(), req.n_samples or 256
    rows = []
    with seeded(req.seed):
        for i in range(len(req.images)):
            rows.append(
                make(req.forward).attribute(
                    req.images[i : i + 1],
                    baselines=base[i : i + 1],
                    target=int(req.target[i]),
                    feature_mask=masks[i : i + 1],
                    n_samples=n,
                    perturbations_per_eval=min(n, 64),
                )
            )
    attr = torch.cat(rows).detach()
    return Maps(_channel_sum(attr), attr)


def kernel_shap(req: Request) -> Maps:
    """KernelSHAP (Lundberg & Lee 2017) on patch or superpixel features."""
    return _perturbation(req, KernelShap)


def lime(req: Request) -> Maps:
    """LIME (Ribeiro et al. 2016) on patch or superpixel features."""
    return _perturbation(req, Lime)


def occlusion(req: Request) -> Maps:
    """Occlusion (Zeiler & Fergus 2014): output drop when a sliding window is set to the baseline."""
    c, h, w = req.images.shape[1:]
    window = req.window or req.patch or default_patch(h, w)
    attr = Occlusion(req.forward).attribute(
        req.images,
        sliding_window_shapes=(c, window, window),
        strides=(c, req.stride, req.stride),
        baselines=req.base(),
        target=_targets(req),
        perturbations_per_eval=int(req.options.get("perturbations_per_eval", 16)),
    )
    return Maps(_channel_sum(attr).detach(), attr.detach())


def _pattern_sites(req: Request) -> str | None:
    """The attention-probability sites: site=, the model's own `pattern_sites`, or None for a
    Hugging Face model (its `output_attentions`)."""
    sites = req.site or getattr(req.model.hf, "pattern_sites", None)
    if isinstance(sites, str):
        return sites
    if getattr(req.model.hf, "config", None) is not None and vit.patch_size(req.model) is not None:
        return None
    raise MechscopeError(f"name {req.model.name}'s attention-probability sites with site= (a glob)")


def attention_rollout(req: Request) -> Maps:
    grid = vit.rollout(req.model, req.images, None, _pattern_sites(req), gradient=False)
    return Maps(vit.upsample(grid, req.images.shape[-2:], req.upsample), layer_maps=grid)


def gradient_rollout(req: Request) -> Maps:
    grid = vit.rollout(req.model, req.images, req.target, _pattern_sites(req), gradient=True)
    return Maps(vit.upsample(grid, req.images.shape[-2:], req.upsample), layer_maps=grid)


METHODS: dict[str, tuple[Callable[[Request], Maps], bool]] = {
    "gradcam": (gradcam, False),
    "hirescam": (hirescam, False),
    "guided_gradcam": (guided_gradcam, True),
    "ig": (integrated_gradients, True),
    "saliency": (saliency, False),
    "gradient_shap": (gradient_shap, True),
    "kernel_shap": (kernel_shap, True),
    "lime": (lime, True),
    "occlusion": (occlusion, True),
    "rollout": (attention_rollout, False),
    "grad_rollout": (gradient_rollout, False),
}
"""name -> (method, whether its maps are signed)."""
ALIASES = {"shap": "gradient_shap", "integrated_gradients": "ig", "grad-cam": "gradcam"}


def method_named(name: str) -> tuple[str, Callable[[Request], Maps], bool]:
    key = ALIASES.get(name, name)
    if key not in METHODS:
        raise MechscopeError(f"unknown attribution method {name!r}: use one of {', '.join(METHODS)}")
    return key, *METHODS[key]
