"""Reading images for the command line: files as data (.npy without pickles, .safetensors,
.png/.jpg through matplotlib) or the bundled digits (`digits:0-7`, `digits:3,5`: test-split
images of scikit-learn's digits, normalised as zoo:digits and zoo:vit-digits read them)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import MechscopeError


def _indices(spec: str, limit: int) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m:
            raise MechscopeError(f"digits:{spec}: give test-split indices like digits:0-7 or digits:3,5,11")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        out += range(lo, hi + 1)
    bad = [i for i in out if i >= limit]
    if bad or not out:
        raise MechscopeError(f"digits:{spec}: the test split has {limit} images (0-{limit - 1})")
    return out


def digits_split(train: bool = False, n: int | None = None) -> tuple[Tensor, Tensor]:
    """(images [N, 1, 8, 8], labels [N]) of the digits split used by the zoo's digit models."""
    from ..zoo import digits

    split = digits.data(0)
    x, y = (split.x_train, split.y_train) if train else (split.x_test, split.y_test)
    return (x[:n], y[:n]) if n else (x, y)


def _as_batch(array: np.ndarray, source: str) -> Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float()
    if tensor.dim() == 2:
        return tensor[None, None]
    if tensor.dim() == 3 and tensor.shape[-1] in (1, 3, 4) and tensor.shape[0] not in (1, 3):
        tensor = tensor[..., :3].permute(2, 0, 1)  # an image file's [H, W, C]
    if tensor.dim() == 3:
        return tensor[None]
    if tensor.dim() == 4:
        return tensor
    raise MechscopeError(f"{source}: expected images [H, W], [C, H, W] or [N, C, H, W], got {tuple(tensor.shape)}")


def read_images(spec: str) -> Tensor:
    """Images [N, C, H, W] from a file or a `digits:` selection (see the module docstring)."""
    if spec.startswith("digits:"):
        x, _ = digits_split()
        return x[_indices(spec.removeprefix("digits:"), len(x))]
    path = Path(spec)
    if not path.is_file():
        raise MechscopeError(f"no image file '{spec}': give a .npy, .safetensors, .png or .jpg file, or digits:0-7")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _as_batch(np.load(path, allow_pickle=False), spec)
        if suffix == ".safetensors":
            from ..io import read_tensors

            tensors = read_tensors(path, what="images")
            key = "images" if "images" in tensors else next(iter(tensors), None)
            if key is None:
                raise MechscopeError(f"{spec} holds no tensors")
            return _as_batch(tensors[key].float().numpy(), spec)
        if suffix in (".png", ".jpg", ".jpeg"):
            from matplotlib.image import imread

            image = imread(path)
            return _as_batch(image / 255.0 if image.dtype == np.uint8 else image, spec)
    except (ValueError, OSError) as err:
        raise MechscopeError(f"cannot read images from {spec}: {str(err).splitlines()[0]}") from None
    raise MechscopeError(f"{spec}: unknown image file type {suffix!r} (use .npy, .safetensors, .png or .jpg)")
