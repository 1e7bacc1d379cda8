"""Model-parameter randomisation for the sanity checks (Adebayo et al. 2018): the model's
layers from the top (logits) down, and fresh weights for one or more of them.

Layers are the module's parameterised children in registration order, with containers of
blocks (a `ModuleList`, or a child that holds one) opened into their items, so a CNN's
stages are `conv1, conv2, fc`, a ViT's `patch_embed, blocks.0 ... blocks.3, norm, head`
and a Hugging Face ViT's `vit.embeddings, vit.encoder.layer.0 ..., classifier`. Parameters
held directly by a container (a class token, position embeddings) form a layer of their own,
before the container's children.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _holds_list(module: nn.Module) -> bool:
    return any(isinstance(m, nn.ModuleList) for m in module.modules())


def layers(module: nn.Module, prefix: str = "") -> list[str]:
    """Parameterised layers in forward (registration) order; `PATH:params` names the direct
    parameters of the container at PATH ('' for the root)."""
    out = [f"{prefix}:params"] if any(True for _ in module.parameters(recurse=False)) else []
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if not any(True for _ in child.parameters()):
            continue
        out += layers(child, path) if _holds_list(child) else [path]
    return out


def top_down(module: nn.Module) -> list[str]:
    """The cascade's stages: layers from the output back to the input."""
    return layers(module)[::-1]


def _fresh(tensor: torch.Tensor) -> torch.Tensor:
    """Random values with the tensor's own mean and spread (for parameters without a reset)."""
    std = float(tensor.float().std()) if tensor.numel() > 1 else 0.02
    return torch.randn_like(tensor) * (std or 0.02) + tensor.float().mean().to(tensor.dtype)


@torch.no_grad()
def randomise(module: nn.Module, layer: str, generator_seed: int) -> None:
    """Give `layer` of `module` fresh weights, in place: each submodule's own
    `reset_parameters()` (its initialisation) where it has one, else random values of
    the trained tensor's mean and spread."""
    path, _, kind = layer.partition(":")
    target = module.get_submodule(path) if path else module
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        if kind == "params":
            for p in target.parameters(recurse=False):
                p.copy_(_fresh(p))
            return
        done: set[int] = set()
        for sub in target.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
                done |= {id(p) for p in sub.parameters(recurse=False)}
        for p in target.parameters():
            if id(p) not in done:
                p.copy_(_fresh(p))


def cascade(module: nn.Module, seed: int = 0):
    """Yield (stage name, model copy) with the top 1, 2, ... layers randomised (cumulative)."""
    randomised = copy.deepcopy(module)
    for k, layer in enumerate(top_down(module)):
        randomise(randomised, layer, seed + k)
        path, _, kind = layer.partition(":")
        yield (f"{path or 'root'} params" if kind else path), randomised
