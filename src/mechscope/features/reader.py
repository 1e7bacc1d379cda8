"""`LatentReader`: a dictionary's latents for a batch of token contexts — an SAE or a
transcoder at its input site, or a crosscoder over several sites (of one model, or of two
models for model diffing, whose blocks are named "label:site")."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..dictionary import SparseCoder
from ..errors import MechscopeError


class LatentReader:
    """`reader(tokens) -> acts [batch, pos, d_sae]`; `models` maps labels to models (the
    first one runs alone for single-model dictionaries)."""

    def __init__(self, models: Mapping[str, object], coder: SparseCoder):
        self.models, self.coder = dict(models), coder
        self.plan: list[tuple[str, str]] = []  # (model label, site) per block, in the coder's order
        first = next(iter(self.models))
        for block in coder.cfg.blocks or (coder.cfg.hook_name,):
            label, _, site = block.rpartition(":") if ":" in block else ("", "", block)
            if label and label not in self.models:
                raise MechscopeError(
                    f"the dictionary reads '{block}' but no model is labelled {label!r} "
                    f"(given: {', '.join(self.models)}): pass models as {{label: model}}"
                )
            self.plan.append((label or first, site))
        if not self.plan[0][1]:
            raise MechscopeError("the dictionary names no site (cfg.hook_name is empty): set it before building")

    @property
    def single(self) -> bool:
        """Whether one model feeds every block (so one run's cache can be encoded)."""
        return len({label for label, _ in self.plan}) == 1

    @property
    def sites(self) -> list[str]:
        return [site for _, site in self.plan]

    @torch.no_grad()
    def encode(self, cache: dict[str, Tensor]) -> Float[Tensor, "batch pos d_sae"]:
        """Latents from recorded activations of a single-model dictionary's `sites`."""
        x = torch.cat([cache[site].reshape(*cache[site].shape[:2], -1) for site in self.sites], dim=-1)
        return self.coder.encode(x.to(self.coder.W_enc.device, self.coder.W_enc.dtype)).float().cpu()

    @torch.no_grad()
    def __call__(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_sae"]:
        recorded: dict[tuple[str, str], Tensor] = {}
        for label in dict.fromkeys(label for label, _ in self.plan):
            sites = [s for m, s in self.plan if m == label]
            model = self.models[label]
            run = model.run(tokens.to(model.device), record=sites, logits=False)  # type: ignore[attr-defined]
            for site in sites:
                x = run.cache[site]
                recorded[(label, site)] = x.reshape(*x.shape[:2], -1)
        x = torch.cat([recorded[key] for key in self.plan], dim=-1)
        return self.coder.encode(x.to(self.coder.W_enc.device, self.coder.W_enc.dtype)).float().cpu()
