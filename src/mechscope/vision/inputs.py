"""What every vision method checks first: the model (a `ModuleModel`, or a bare torch module /
Hugging Face image classifier wrapped into one), the images and the target classes; and the
plain `images -> logits` function that captum differentiates."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import MechscopeError
from ..module_model import ModuleModel

Forward = Callable[[Tensor], Tensor]


def as_image_model(model) -> ModuleModel:
    """`model` as a `ModuleModel` (a bare module, e.g. `ViTForImageClassification`, is wrapped)."""
    if isinstance(model, ModuleModel):
        return model
    if isinstance(model, nn.Module):
        return ModuleModel(model)
    raise MechscopeError(
        f"an image model must be a mechscope ModuleModel or a torch module, got {type(model).__name__}: "
        "load it with ms.load('zoo:NAME') or wrap it with mechscope.ModuleModel(module)"
    )


def logits_of(output) -> Tensor:
    """The logits in a module's output: the tensor itself, `.logits` (Hugging Face), or item 0."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, Tensor) else output[0]


def forward_fn(model: ModuleModel) -> Forward:
    """`images -> logits [batch, classes]` with the model's held edits (`with model.edit(...)`):
    the module's own call when none are held (no wrapper cost), else through `model.run`."""
    module = model.hf

    def forward(x: Tensor) -> Tensor:
        if model._held_edits:
            return model.run(x, grad=torch.is_grad_enabled()).logits
        return logits_of(module(x))

    return forward


class LogitsModule(nn.Module):
    """A module returning plain logits, for captum methods that need an `nn.Module`
    (Guided Grad-CAM replaces the backward of the ReLU modules inside it)."""

    def __init__(self, forward: Forward, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self._forward = forward

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)


_STRUCTURE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def structural(module: nn.Module, key: str, compute: Callable[[nn.Module], Any]) -> Any:
    """`compute(module)`, remembered per module: facts about its layout (channels, head size,
    last conv), which a walk over its submodules would otherwise cost on every call."""
    facts = _STRUCTURE.setdefault(module, {})
    if key not in facts:
        facts[key] = compute(module)
    return facts[key]


def _first_conv_channels(module: nn.Module) -> int | None:
    conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def input_channels(module: nn.Module) -> int | None:
    """Channels the model's first convolution reads (None when it has none)."""
    return structural(module, "channels", _first_conv_channels)


def check_images(model: ModuleModel, images) -> Tensor:
    """Images as a float tensor [batch, channels, height, width] that the model reads, or a
    one-line error saying what is wrong; a single image [channels, height, width] gets a batch axis."""
    if not isinstance(images, Tensor):
        raise MechscopeError(f"images must be a tensor [batch, channels, height, width], got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.numel() == 0:
        raise MechscopeError(
            f"images must be [batch, channels, height, width] (or one image [channels, height, width]), "
            f"got shape {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise MechscopeError(f"images must be floating point (normalised model inputs), got {images.dtype}")
    channels = input_channels(model.hf)
    if channels is not None and images.shape[1] != channels:
        raise MechscopeError(f"{model.name} reads {channels}-channel images, got {images.shape[1]} channels")
    return images.to(model.device)


def _head_size(module: nn.Module) -> int | None:
    from .randomise import layers

    found = layers(module)
    last = module.get_submodule(found[-1]) if found and ":" not in found[-1] else None
    return last.out_features if isinstance(last, nn.Linear) else None


def declared_classes(module: nn.Module) -> int | None:
    """Classes the model declares without running it: the output size of its last layer when
    that is a linear classifier head (None otherwise)."""
    return structural(module, "classes", _head_size)


def read_error(model: ModuleModel, images: Tensor, err: Exception) -> MechscopeError:
    """A shape mismatch deep inside the model, as one line."""
    return MechscopeError(
        f"{model.name} cannot read images of shape {tuple(images.shape[1:])}: {str(err).splitlines()[0]}"
    )


def class_count(model: ModuleModel, images: Tensor) -> tuple[int, Tensor]:
    """Number of classes and the logits of `images` [batch, classes] (a trial forward that
    turns a shape mismatch deep inside the model into one line)."""
    try:
        with torch.no_grad():
            logits = forward_fn(model)(images)
    except MechscopeError:
        raise
    except (RuntimeError, ValueError, IndexError) as err:
        raise read_error(model, images, err) from None
    if logits.dim() != 2:
        raise MechscopeError(f"{model.name} returns shape {tuple(logits.shape)}, not logits [batch, classes]")
    return logits.shape[1], logits


def targets_for(model: ModuleModel, images: Tensor, target) -> Tensor:
    """Checked target classes [batch]; a trial forward only where it is needed (no target
    given: the predictions; or a model that declares no class count)."""
    declared = None if target is None else declared_classes(model.hf)
    if declared is not None:
        return check_target(target, declared, len(images), None)
    n_classes, logits = class_count(model, images)
    return check_target(target, n_classes, len(images), logits)


def check_target(target, n_classes: int, batch: int, logits: Tensor | None) -> Tensor:
    """Target classes [batch]: None = each image's predicted class; an int for all images; a list per image."""
    if target is None:
        assert logits is not None  # the caller ran the model to find the predictions
        return logits.argmax(-1).cpu()
    if isinstance(target, Tensor):
        target = target.flatten().tolist()
    values = [target] * batch if isinstance(target, int) else list(target) if isinstance(target, Sequence) else None
    if values is None or any(isinstance(t, bool) or not isinstance(t, int) for t in values):
        raise MechscopeError(f"target must be a class index, a list of them or None (predicted), got {target!r}")
    if len(values) != batch:
        raise MechscopeError(f"{len(values)} targets for {batch} images: give one per image or a single int")
    bad = [t for t in values if not 0 <= t < n_classes]
    if bad:
        raise MechscopeError(
            f"target class {bad[0]} is out of range: this model has {n_classes} classes (0-{n_classes - 1})"
        )
    return torch.tensor(values)
