"""`attribute(model, inputs, target, method=...) -> Attribution`: where a classifier looks.

One call for every method (Grad-CAM, Guided Grad-CAM, Integrated Gradients, saliency,
GradientSHAP, KernelSHAP, LIME, occlusion, attention rollout and its gradient-weighted form)
on `ModuleModel`s and Hugging Face image classifiers; a language model (`Model`) given text
is explained by Integrated Gradients over its token embeddings (`hook_embed`) instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import MechscopeError
from ..module_model import ModuleModel
from ..results import Saveable, pandas
from .inputs import as_image_model, check_images, forward_fn, read_error, targets_for
from .methods import Request, method_named


@dataclass
class Attribution(Saveable):
    """Attribution maps of a batch of inputs for one method and one target class per input.

    Invariants: `maps[i]` has the shape of input i's pixels [height, width] (or its tokens
    [pos] for a language model); where the method has a completeness gap (`delta`), it is
    the sum of `attributions[i]` minus `output_diff[i]`.
    """

    KIND: ClassVar[str] = "attribution"
    method: str
    model_name: str
    signed: bool
    """Whether the maps carry a sign (IG, SHAP, occlusion) or are nonnegative (Grad-CAM)."""
    target: Int[Tensor, " batch"]
    maps: Float[Tensor, "batch ..."]
    inputs: Tensor
    site: str | None = None
    attributions: Tensor | None = None
    """Per-channel (or per embedding dimension) attributions, shaped like the inputs."""
    delta: Float[Tensor, " batch"] | None = None
    output_diff: Float[Tensor, " batch"] | None = None
    layer_maps: Tensor | None = None
    """The map at the site's resolution (Grad-CAM's conv map, rollout's patch grid)."""
    tokens: list[str] | None = None
    """The tokens of a text input (language models)."""

    @property
    def completeness(self) -> Tensor | None:
        """|sum of attributions - output difference| / |output difference| per input."""
        if self.delta is None or self.output_diff is None:
            return None
        return self.delta.abs() / self.output_diff.abs().clamp_min(1e-12)

    def mass(self, region: Tensor) -> Tensor:
        """Share of each map's absolute mass inside `region` (a boolean mask of one map's shape)."""
        if tuple(region.shape) != tuple(self.maps.shape[1:]):
            raise MechscopeError(f"region has shape {tuple(region.shape)}, maps {tuple(self.maps.shape[1:])}")
        weight = self.maps.abs().flatten(1)
        return (weight * region.flatten().to(weight)).sum(1) / weight.sum(1).clamp_min(1e-12)

    def to_frame(self):
        rows = [
            {
                "input": i,
                "method": self.method,
                "target": int(self.target[i]),
                "abs_mass": float(self.maps[i].abs().sum()),
                "completeness": None if self.completeness is None else float(self.completeness[i]),
            }
            for i in range(len(self.target))
        ]
        return pandas().DataFrame(rows)

    def plot(self, index: int | None = None):
        """The inputs with their maps laid over them (tokens coloured for text)."""
        from .figures import overlay_figure, token_figure

        return token_figure(self) if self.tokens is not None else overlay_figure(self, index)


def attribute(
    model,
    inputs,
    target=None,
    *,
    method: str | Callable[[ModuleModel, Tensor, Tensor], Tensor] = "gradcam",
    site: str | None = None,
    steps: int = 50,
    baseline: Tensor | float | None = None,
    n_samples: int | None = None,
    mask: str = "patch",
    patch: int | None = None,
    window: int | None = None,
    stride: int = 1,
    upsample: str = "bilinear",
    internal_batch_size: int | None = None,
    seed: int = 0,
    **options,
) -> Attribution:
    """Attribute each input's target class (None: the predicted class) to its pixels.

    method: gradcam | guided_gradcam | ig | saliency | gradient_shap (shap) | kernel_shap |
    lime | occlusion | rollout | grad_rollout, or a callable `(model, images, target) ->
    maps [batch, H, W]` (an outside method to put through `sanity`). site: Grad-CAM's layer
    (default: the model's last conv, or a ViT's last block norm) or rollout's attention
    sites (a glob). steps: IG's integration points. baseline: the reference input (zeros by
    default). n_samples: SHAP/LIME samples. mask: 'patch' or 'superpixel' features for
    KernelSHAP/LIME, `patch` their cell size. window/stride: occlusion's square window.
    For a language model, `inputs` is text and `target` a token; only method='ig' applies,
    from the mean token embedding (baseline='mean'), 'zero', a token, or a [d_model] tensor.
    """
    from ..model import Model

    if isinstance(model, Model):
        from .text import attribute_text

        if method not in ("ig", "integrated_gradients"):
            raise MechscopeError(f"a language model is explained with method='ig' (over hook_embed), not {method!r}")
        return attribute_text(
            model, inputs, target, steps=steps, baseline=baseline, internal_batch_size=internal_batch_size
        )
    model = as_image_model(model)
    images = check_images(model, inputs)
    targets = targets_for(model, images, target)
    if callable(method):
        return _custom(model, images, targets, method)
    name, run, signed = method_named(method)
    request = Request(
        model, images, targets, forward_fn(model), site, steps, baseline, n_samples, mask, patch, window, stride,
        upsample, internal_batch_size, seed, options,
    )  # fmt: skip
    try:
        with warnings.catch_warnings():  # captum's notes on what it does on purpose: not news to the user
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            out = run(request)
    except (RuntimeError, ValueError, IndexError) as err:
        raise read_error(model, images, err) from None
    cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
    return Attribution(
        name, model.name, signed, targets, out.maps.detach().cpu(), images.detach().cpu(), site,
        cpu(out.attributions), out.delta, out.output_diff, cpu(out.layer_maps),
    )  # fmt: skip


def _custom(model: ModuleModel, images: Tensor, targets: Tensor, method) -> Attribution:
    """An outside method's maps, checked for shape, in an `Attribution`."""
    with torch.enable_grad():
        maps = method(model, images, targets)
    expected = (len(images), *images.shape[-2:])
    if not isinstance(maps, Tensor) or tuple(maps.shape) != expected:
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise MechscopeError(f"a custom method must return maps {expected} [batch, height, width], got {got}")
    name = getattr(method, "__name__", "custom")
    return Attribution(name, model.name, True, targets, maps.detach().float().cpu(), images.detach().cpu())
