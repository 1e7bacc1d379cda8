"""How a site sees the raw tensor at its module boundary: `View` (the whole tensor) and its
kinds (heads, one part of a fused qkv projection, scaled, copied, read-only, router
logits, expert routing weights, attention pattern). Each reads the site's value from the raw tensor and writes an
edited value back into it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


class View:
    """Whole tensor: the site is exactly the raw tensor at the boundary."""

    head_dim: int | None = None
    editable = True
    index: int | None = 0  # which element of a tuple output holds the raw tensor (None: the whole tuple)

    def read(self, raw: Tensor) -> Tensor:
        return raw

    def write(self, raw: Tensor, value: Tensor) -> Tensor:
        return value


@dataclass(frozen=True)
class HeadsView(View):
    """[..., head * d_head] seen as [..., head, d_head]."""

    n_heads: int
    d_head: int
    head_dim: int = 2

    def read(self, raw: Tensor) -> Tensor:
        return raw.unflatten(-1, (self.n_heads, self.d_head))

    def write(self, raw: Tensor, value: Tensor) -> Tensor:
        return value.flatten(-2)


@dataclass(frozen=True)
class FusedQKVView(View):
    """One of q, k, v (part 0, 1, 2) out of a fused projection, as [..., head, d_head].
    `layout` is the adapter's qkv_layout; `n_kv_heads` matters for 'concat' (q then k then v)."""

    part: int
    layout: (
        str  # neox_fused: [head, 3, d_head]; gpt2_fused / concat: [q | k | v]; grouped: [kv_head, group + 2, d_head]
    )
    n_heads: int
    d_head: int
    n_kv_heads: int | None = None
    head_dim: int = 2

    def _sizes(self) -> list[int]:
        kv = self.n_kv_heads or self.n_heads
        return [self.n_heads * self.d_head, kv * self.d_head, kv * self.d_head]

    def _groups(self, raw: Tensor) -> list[Tensor]:
        """grouped: each key/value head's queries, then its key, then its value (Falcon-40B)."""
        kv = self.n_kv_heads or self.n_heads
        group = self.n_heads // kv
        return list(raw.unflatten(-1, (kv, group + 2, self.d_head)).split([group, 1, 1], dim=-2))

    def read(self, raw: Tensor) -> Tensor:
        if self.layout == "neox_fused":
            return raw.unflatten(-1, (self.n_heads, 3, self.d_head)).select(-2, self.part)
        if self.layout == "grouped":
            return self._groups(raw)[self.part].flatten(-3, -2)
        part = raw.split(self._sizes(), dim=-1)[self.part]
        return part.unflatten(-1, (-1, self.d_head))

    def write(self, raw: Tensor, value: Tensor) -> Tensor:
        if self.layout == "neox_fused":
            parts = list(raw.unflatten(-1, (self.n_heads, 3, self.d_head)).unbind(-2))
            parts[self.part] = value
            return torch.stack(parts, dim=-2).flatten(-3)
        if self.layout == "grouped":
            parts = self._groups(raw)
            parts[self.part] = value.unflatten(-2, parts[self.part].shape[-3:-1])
            return torch.cat(parts, dim=-2).flatten(-3)
        parts = list(raw.split(self._sizes(), dim=-1))
        parts[self.part] = value.flatten(-2)
        return torch.cat(parts, dim=-1)


@dataclass(frozen=True)
class ScaledView(View):
    """The raw tensor times a constant (Granite's residual multiplier): what the residual
    receives. Writing divides by it, so the model multiplies the written value back."""

    scale: float

    def read(self, raw: Tensor) -> Tensor:
        return raw * self.scale

    def write(self, raw: Tensor, value: Tensor) -> Tensor:
        return value / self.scale


class CopyView(View):
    """A tensor the model later changes in place: read a copy, and write one, so neither
    the recorded value nor the caller's replacement is changed behind their backs."""

    def read(self, raw: Tensor) -> Tensor:
        return raw.clone()

    def write(self, raw: Tensor, value: Tensor) -> Tensor:
        return value.clone()


@dataclass(frozen=True)
class ReadOnlyView(View):
    """The whole tensor, recorded only: an edit at this boundary would not do what the
    site's name says (`reason` tells why and what to edit instead)."""

    reason: str = ""
    editable = False


class RouterView(View):
    """Router logits, output[0] of a MoE router, over flattened tokens [batch * pos, expert]
    (the hooks unflatten them: `Site.rows_from`). Read-only: the router has already chosen
    its experts from them when it returns."""

    editable = False


@dataclass(frozen=True)
class ExpertWeightsView(View):
    """A MoE router's routing weights, seen dense as [batch * pos, expert]: the weight each
    expert's output gets in the block's sum, 0 for experts the router did not choose. The raw
    value is the router's whole output (logits, top-k weights, top-k indices). Writing gathers
    the chosen experts' entries back, so an edit reweights the chosen experts (0 removes an
    expert's output exactly) but cannot route a token to an expert the router did not choose."""

    n_experts: int
    index = None

    def read(self, raw) -> Tensor:
        _, weights, chosen = raw
        dense = torch.zeros(weights.shape[0], self.n_experts, dtype=weights.dtype, device=weights.device)
        return dense.scatter(1, chosen, weights)

    def write(self, raw, value: Tensor):
        logits, weights, chosen = raw
        return (logits, value.gather(1, chosen).to(weights.dtype), chosen)


class PatternView(View):
    """Attention probabilities, output[1] of an eager attention module. Read-only: the
    attention function has already used them when the module returns."""

    head_dim = 1
    editable = False
    index = 1
