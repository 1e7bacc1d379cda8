"""Feature masks for perturbation methods (KernelSHAP, LIME): which pixels move together.

`patch_mask` cuts the image into square cells; `superpixel_mask` groups neighbouring pixels
of similar value (a small SLIC: k-means on position and intensity, seeded on a grid), since
scikit-image is not a dependency. Both return integer ids [batch, 1, height, width] that
captum broadcasts over the channels.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import MechscopeError


def default_patch(height: int, width: int, features: int = 16) -> int:
    """A square cell size giving about `features` cells."""
    return max(1, round(math.sqrt(height * width / features)))


def patch_mask(images: Tensor, patch: int) -> Tensor:
    """Ids of `patch` x `patch` cells, row by row (the last row/column of cells may be smaller)."""
    b, _, h, w = images.shape
    if not 1 <= patch <= max(h, w):
        raise MechscopeError(f"patch must be between 1 and {max(h, w)} pixels for {h}x{w} images, got {patch}")
    cols = math.ceil(w / patch)
    ids = (torch.arange(h)[:, None] // patch) * cols + torch.arange(w)[None, :] // patch
    return ids.expand(b, 1, h, w).contiguous().to(images.device)


def _grid_cells(h: int, w: int, n: int) -> Tensor:
    """Ids of a rows x cols grid with rows * cols close to n, cells of near-equal size."""
    rows = min(h, max(1, round(math.sqrt(n * h / w))))
    cols = min(w, max(1, round(n / rows)))
    return (torch.arange(h)[:, None] * rows // h) * cols + torch.arange(w)[None, :] * cols // w


def superpixel_mask(images: Tensor, n_segments: int = 16, compactness: float = 1.0, iters: int = 10) -> Tensor:
    """Superpixel ids per image: k-means on (y, x, intensity), centres seeded on a grid;
    `compactness` weighs position against intensity (both scaled to unit spread)."""
    b, _, h, w = images.shape
    if n_segments < 1:
        raise MechscopeError(f"n_segments must be at least 1, got {n_segments}")
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    step = math.sqrt(h * w / n_segments)
    position = torch.stack([ys, xs], -1).reshape(-1, 2) / step * compactness
    masks = []
    for image in images.detach().float().cpu():
        value = image.mean(0).reshape(-1, 1)
        value = (value - value.mean()) / value.std().clamp_min(1e-8)
        points = torch.cat([position, value], 1)  # [pixels, 3]
        seeds = _grid_cells(h, w, n_segments).reshape(-1)
        centres = torch.stack([points[seeds == s].mean(0) for s in seeds.unique()])
        for _ in range(iters):
            assign = torch.cdist(points, centres).argmin(1)
            centres = torch.stack(
                [points[assign == k].mean(0) if (assign == k).any() else centres[k] for k in range(len(centres))]
            )
        masks.append(assign.unique(return_inverse=True)[1].reshape(1, h, w))  # ids 0..n-1, no gaps
    return torch.stack(masks).to(images.device)


def feature_mask(images: Tensor, kind: str = "patch", patch: int | None = None, n_segments: int = 16) -> Tensor:
    """The mask named by `kind` ('patch' or 'superpixel')."""
    if kind == "patch":
        return patch_mask(images, patch or default_patch(*images.shape[-2:]))
    if kind == "superpixel":
        return superpixel_mask(images, n_segments)
    raise MechscopeError(f"unknown feature mask {kind!r}: use 'patch' or 'superpixel'")
