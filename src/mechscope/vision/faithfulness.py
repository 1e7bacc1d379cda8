"""Deletion and insertion curves (Petsiuk et al. 2018): does the map rank pixels by how much
the model needs them? Deletion sets the highest-ranked pixels to the baseline first (a
faithful map makes the target probability fall fast: low AUC); insertion starts from the
baseline and restores them first (a faithful map makes it rise fast: high AUC). Both are
compared with the same curves for random pixel orders."""

from __future__ import annotations

import torch
from torch import Tensor

from .inputs import Forward


def _step_masks(order: Tensor, steps: int) -> Tensor:
    """[steps + 1, pixels] booleans: the first round(k / steps * pixels) pixels of `order` at step k."""
    pixels = order.numel()
    counts = torch.round(torch.arange(steps + 1) / steps * pixels).long()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(pixels)
    return rank[None, :] < counts[:, None]


def curves(
    forward: Forward,
    images: Tensor,
    target: Tensor,
    orders: Tensor,
    baseline: Tensor,
    steps: int,
    insertion: bool,
    chunk: int = 2048,
) -> Tensor:
    """Target probability [batch, steps + 1] as pixels are removed (or inserted) in `orders`
    [batch, pixels] (all channels of a pixel move together)."""
    b, c, h, w = images.shape
    batch = []
    for i in range(b):
        moved = _step_masks(orders[i].cpu(), steps).view(steps + 1, 1, h, w).to(images.device)
        start, end = (baseline[i], images[i]) if insertion else (images[i], baseline[i])
        batch.append(torch.where(moved, end, start))  # [steps + 1, c, h, w]
    stacked = torch.cat(batch)
    with torch.no_grad():
        probs = torch.cat([forward(part).softmax(-1) for part in stacked.split(chunk)])
    picked = probs.view(b, steps + 1, -1).gather(2, target.to(probs.device).view(b, 1, 1).expand(b, steps + 1, 1))
    return picked[..., 0].cpu()


def auc(curve: Tensor) -> Tensor:
    """Area under each curve [batch, points] over the fraction axis 0..1 (trapezoid)."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[-1] - 1), dim=-1)


def ranked(maps: Tensor) -> Tensor:
    """Pixel orders [batch, pixels], highest attribution first (ties in index order)."""
    return torch.argsort(maps.flatten(1).float(), dim=1, descending=True, stable=True)


def random_orders(batch: int, pixels: int, repeats: int, seed: int) -> Tensor:
    """[repeats, batch, pixels] random permutations from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack(
        [torch.stack([torch.randperm(pixels, generator=gen) for _ in range(batch)]) for _ in range(repeats)]
    )
