"""Feature masks for KernelSHAP and LIME: patch cells in row order, superpixels that follow
the image's edges, and methods that give every pixel of a feature the same attribution."""

from __future__ import annotations

import pytest
import torch

from mechscope import vision
from mechscope.errors import MechscopeError


def test_patch_mask_cells():
    ids = vision.patch_mask(torch.zeros(2, 3, 6, 8), 4)
    assert ids.shape == (2, 1, 6, 8)
    assert ids[0, 0].tolist() == [[0] * 4 + [1] * 4] * 4 + [[2] * 4 + [3] * 4] * 2  # edge cells are smaller
    with pytest.raises(MechscopeError, match="patch must be between 1 and 8"):
        vision.patch_mask(torch.zeros(1, 1, 6, 8), 0)


def test_superpixels_follow_an_edge():
    image = torch.zeros(1, 1, 8, 8)
    image[..., 5:] = 3.0  # a step between columns 4 and 5, off the 2-segment grid's seam at 4
    ids = vision.superpixel_mask(image, n_segments=2, compactness=0.1)[0, 0]
    assert sorted(ids.unique().tolist()) == [0, 1]
    assert (ids[:, :5] == ids[0, 0]).all() and (ids[:, 5:] == ids[0, 7]).all() and ids[0, 0] != ids[0, 7]


def test_perturbation_methods_are_constant_per_feature(digits_model, images):
    for mask in ("patch", "superpixel"):
        result = vision.attribute(digits_model, images[:2], method="lime", mask=mask, n_samples=64)
        ids = vision.patch_mask(images[:2], 2) if mask == "patch" else vision.superpixel_mask(images[:2])
        for i in range(2):
            for k in ids[i, 0].unique():
                values = result.maps[i][ids[i, 0] == k]
                assert torch.allclose(values, values[0].expand_as(values)), (mask, i, int(k))
