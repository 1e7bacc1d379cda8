"""Vision transformers: tokens back onto the patch grid, Grad-CAM on tokens, attention rollout.

The grid is derived from the model and the images, never assumed square or 14x14: the patch
size comes from the module (`patch_size`, or a Hugging Face `config.patch_size`), the grid is
(height / patch, width / patch), and whatever tokens precede the grid (class token,
distillation or register tokens) are dropped. Token order is row by row, as a conv patch
embedding's `flatten(2)` gives it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import MechscopeError
from ..module_model import ModuleModel


def patch_size(model: ModuleModel) -> int | None:
    """The model's patch side in pixels (None for a model without a patch grid)."""
    for source in (model.hf, getattr(model.hf, "config", None)):
        value = getattr(source, "patch_size", None)
        if isinstance(value, (tuple, list)) and value:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def token_grid(model: ModuleModel, image_hw: Sequence[int], n_tokens: int) -> tuple[int, int, int]:
    """(prefix tokens, grid rows, grid cols) for images of `image_hw` seen as `n_tokens` tokens."""
    patch = patch_size(model)
    if patch is None:
        raise MechscopeError(f"{model.name} has no patch size (patch_size or config.patch_size): not a ViT")
    rows, cols = image_hw[0] // patch, image_hw[1] // patch
    prefix = n_tokens - rows * cols
    if prefix < 0:
        raise MechscopeError(
            f"{n_tokens} tokens cannot hold a {rows}x{cols} patch grid ({image_hw[0]}x{image_hw[1]} images, "
            f"patch {patch}): choose a site whose tokens are [prefix tokens; patches]"
        )
    return prefix, rows, cols


def to_grid(tokens: Tensor, prefix: int, rows: int, cols: int) -> Tensor:
    """Patch tokens [batch, tokens, ...] -> [batch, rows, cols, ...] (prefix tokens dropped)."""
    return tokens[:, prefix:].reshape(tokens.shape[0], rows, cols, *tokens.shape[2:])


def upsample(maps: Tensor, size: Sequence[int], mode: str = "bilinear") -> Tensor:
    """Maps [batch, rows, cols] -> [batch, height, width]."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(maps[:, None], size=(size[0], size[1]), mode=mode, **kwargs)[:, 0]


def token_gradcam(model: ModuleModel, images: Tensor, target: Tensor, site: str) -> Tensor:
    """Grad-CAM on a token site: ReLU(sum_d mean_patches(dScore/dA_d) * A_d) on the patch grid,
    [batch, rows, cols]; the class token carries no place in the image, so it is dropped."""
    run = model.run(images, record=site, grad=True)
    acts = run.cache[site]
    if acts.dim() != 3:
        raise MechscopeError(f"site {site} has shape {tuple(acts.shape)}, not tokens [batch, token, d_model]")
    score = run.output.gather(1, target[:, None].to(run.output.device)).sum()
    (grads,) = torch.autograd.grad(score, acts)
    prefix, rows, cols = token_grid(model, images.shape[-2:], acts.shape[1])
    a, g = to_grid(acts.detach(), prefix, rows, cols), to_grid(grads, prefix, rows, cols)
    weights = g.mean((1, 2))  # [batch, d_model], as Grad-CAM averages over space
    return F.relu((a * weights[:, None, None, :]).sum(-1))


def _patterns(model: ModuleModel, images: Tensor, sites: str | list[str] | None, grad: bool):
    """(logits, attention probabilities per layer [batch, head, token, token]) from the named
    sites, or, with sites=None, from a Hugging Face model's own `output_attentions` (eager
    attention for this call; held edits do not apply on that path)."""
    if sites is None:
        with torch.enable_grad() if grad else torch.no_grad(), model._eager_attention(True):
            out = model.hf(images, output_attentions=True)
        attentions = getattr(out, "attentions", None)
        if not attentions:
            raise MechscopeError(f"{model.name} returns no attentions: name its attention-probability sites with site=")
        return out.logits, list(attentions)
    names = model.table.resolve(sites)
    run = model.run(images, record=names, grad=grad)
    patterns = [run.cache[n] for n in names]
    bad = [n for n, p in zip(names, patterns) if p.dim() != 4 or p.shape[-1] != p.shape[-2]]
    if not names or bad:
        raise MechscopeError(
            f"attention rollout needs attention probabilities [batch, head, token, token] at every site; "
            f"{bad[0] if bad else sites} is not one"
        )
    assert run.output is not None  # a module model always returns its output
    return run.output, patterns


def rollout(
    model: ModuleModel, images: Tensor, target: Tensor | None, sites: str | list[str] | None, gradient: bool
) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020) or its gradient-weighted form (Chefer et al.
    2021) from the class token to the patches, [batch, rows, cols].

    Plain: R = prod_l norm(0.5 * mean_heads(A_l) + 0.5 * I), first layer applied first.
    Gradient-weighted: R <- R + mean_heads(relu(dScore/dA_l * A_l)) @ R, starting from I.
    """
    logits, patterns = _patterns(model, images, sites, gradient)
    grads: list[Tensor | None] = [None] * len(patterns)
    if gradient:
        assert target is not None
        score = logits.gather(1, target[:, None].to(logits.device)).sum()
        grads = list(torch.autograd.grad(score, patterns))
    b, _, t, _ = patterns[0].shape
    eye = torch.eye(t, device=patterns[0].device).expand(b, t, t)
    r = eye.clone()
    for a, g in zip(patterns, grads):
        a = a.detach()
        if g is not None:
            r = r + (g * a).clamp_min(0).mean(1) @ r
        else:
            mixed = 0.5 * a.mean(1) + 0.5 * eye  # the residual stream carries half of each token on
            r = (mixed / mixed.sum(-1, keepdim=True)) @ r
    prefix, rows, cols = token_grid(model, images.shape[-2:], t)
    return r[:, 0, prefix:].reshape(b, rows, cols)
