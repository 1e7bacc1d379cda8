"""Edits: what to do to an activation during a forward pass.

An `Edit` names a site (or glob), an operation and, optionally, the positions and
heads it touches. Edits are plain values: pass them to `model.run(..., edits=[...])`,
`model.generate(..., edits=[...])` or hold them for a block with `with model.edit(...)`.
They are applied functionally (never in place), so gradients flow through them.

Positions count within each sequence: negative positions are relative to each
sequence's own length, so `-1` is the last real token even in a padded batch.
During `generate` the first forward sees the prompt and each later one a single new
token; a position that a forward does not contain is left alone there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .errors import MechscopeError

Positions = int | Sequence[int] | slice | None
Heads = int | Sequence[int] | None


@dataclass(frozen=True)
class Edit:
    """One change to a site's activation during a forward pass: a frozen value, built with
    `replace`, `add`, `scale`, `zero`, `mean` or `resample` (see the module docstring).

    Invariants: applied functionally (never in place), so gradients flow through it; it
    touches only the selected `positions` (per sequence, negative from its own end) and
    `heads`, and leaves the rest of the tensor as it was; a value of the wrong shape is
    refused with the site's shape.

        with model.edit(ms.edits.zero("blocks.1.attn.hook_z", heads=3, positions=-1)):
            ablated = model.run(prompt).logits
    """

    site: str
    """Site name or glob (`blocks.*.hook_resid_post`)."""
    op: str
    """replace, add, scale, zero, mean, resample, or observe (reads only)."""
    value: Tensor | Callable[[Tensor], Any] | float | None = None
    """What the op uses: a tensor, a number, a function of the activation (replace; observe's
    callback, whose result is ignored), or None (zero)."""
    positions: Positions = None
    heads: Heads = None
    seed: int = 0
    """Seed for resample ablation, so a run can be repeated exactly."""

    @property
    def changes(self) -> bool:
        """Whether the edit can change the activation (observe only reads it)."""
        return self.op != "observe"

    def apply(self, x: Tensor, *, site: str, dims: tuple[str, ...], lengths: Tensor | None, strict: bool) -> Tensor:
        if not self.changes:
            assert callable(self.value)  # observe() holds its callback
            self.value(x)
            return x
        new = self._new_value(x, site)
        mask = _selection(x, dims, self.positions, self.heads, lengths, site, strict)
        return new if mask is None else torch.where(mask, new, x)

    def _new_value(self, x: Tensor, site: str) -> Tensor:
        if self.op == "zero":
            return torch.zeros_like(x)
        if self.op == "replace" and callable(self.value):
            out = self.value(x)
            _check_shape(out, x, site, exact=True)
            return out
        if self.op == "resample":
            assert isinstance(self.value, Tensor)  # resample() holds its reference batch
            gen = torch.Generator().manual_seed(self.seed)
            rows = torch.randint(len(self.value), (x.shape[0],), generator=gen)
            value = self.value[rows]
        else:
            value = torch.as_tensor(self.value)
        value = value.to(device=x.device, dtype=x.dtype)
        _check_shape(value, x, site)
        if self.op in ("replace", "mean", "resample"):
            return value.expand_as(x)
        if self.op == "add":
            return x + value
        if self.op == "scale":
            return x * value
        raise MechscopeError(f"unknown edit operation '{self.op}'")


def _check_shape(value: Tensor, x: Tensor, site: str, exact: bool = False) -> None:
    ok = value.shape == x.shape
    if not ok and not exact:
        try:
            ok = torch.broadcast_shapes(value.shape, x.shape) == x.shape
        except RuntimeError:
            ok = False
    if not ok:
        raise MechscopeError(
            f"edit of '{site}' has shape {tuple(value.shape)} but the site has shape {tuple(x.shape)}: "
            "give a tensor of the site's shape (or one that broadcasts to it)"
        )


def _as_list(selection: int | Sequence[int]) -> list[int]:
    return [selection] if isinstance(selection, int) else list(selection)


def _selection(x: Tensor, dims, positions, heads, lengths, site: str, strict: bool) -> Tensor | None:
    """A boolean mask broadcastable to x that is True where the edit applies."""
    mask = None
    if positions is not None:
        pos_dim = dims.index("q_pos") if "q_pos" in dims else dims.index("pos") if "pos" in dims else None
        if pos_dim is None:
            raise MechscopeError(f"site '{site}' has no position dimension to select from")
        pos_mask = position_mask(positions, lengths, x.shape[0], x.shape[pos_dim], site, strict).to(x.device)
        shape = [1] * x.dim()
        shape[0], shape[pos_dim] = pos_mask.shape
        mask = pos_mask.view(shape)
    if heads is not None:
        if "head" not in dims:
            raise MechscopeError(f"site '{site}' has no head dimension; select heads at hook_q/k/v/z/pattern")
        head_dim = dims.index("head")
        n = x.shape[head_dim]
        chosen = _as_list(heads)
        if any(not -n <= h < n for h in chosen):
            raise MechscopeError(f"head {chosen} out of range for '{site}', which has {n} heads (0-{n - 1})")
        head_mask = torch.zeros(n, dtype=torch.bool, device=x.device)
        head_mask[chosen] = True
        shape = [1] * x.dim()
        shape[head_dim] = n
        mask = head_mask.view(shape) if mask is None else mask & head_mask.view(shape)
    return mask


def position_mask(
    positions: int | Sequence[int] | slice, lengths: Tensor | None, batch: int, seq: int, site: str, strict: bool
) -> Tensor:
    """[batch, seq] bool: which positions of each sequence are selected."""
    lengths = torch.full((batch,), seq) if lengths is None else lengths.cpu()
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    if isinstance(positions, slice):
        for row, n in enumerate(lengths.tolist()):
            mask[row, list(range(n))[positions]] = True
        return mask
    for p in _as_list(positions):
        index = torch.where(torch.tensor(p) < 0, lengths + p, torch.full_like(lengths, p))
        inside = (index >= 0) & (index < seq) & (index < lengths)
        if strict and not bool(inside.all()):
            raise MechscopeError(
                f"position {p} is outside the sequence at '{site}' (lengths {sorted(set(lengths.tolist()))})"
            )
        rows = torch.arange(batch)[inside]
        mask[rows, index[inside]] = True
    return mask


# Constructors: the public way to write edits.


def replace(
    site: str, value: Tensor | Callable[[Tensor], Tensor], *, positions: Positions = None, heads: Heads = None
) -> Edit:
    """Replace the activation with `value` (a tensor broadcastable to it, or a function of it)."""
    return Edit(site, "replace", value, positions, heads)


def observe(site: str, fn: Callable[[Tensor], None]) -> Edit:
    """Call `fn(activation)` during the forward pass and change nothing: hands a value to a
    later edit of the same forward (a transcoder's input to its target). Allowed at
    read-only sites too."""
    return Edit(site, "observe", fn)


def add(site: str, vector: Tensor, *, positions: Positions = None, heads: Heads = None) -> Edit:
    """Add `vector` (e.g. a steering direction) to the activation."""
    return Edit(site, "add", vector, positions, heads)


def scale(site: str, factor: float | Tensor, *, positions: Positions = None, heads: Heads = None) -> Edit:
    """Multiply the activation by `factor`."""
    return Edit(site, "scale", factor, positions, heads)


def zero(site: str, *, positions: Positions = None, heads: Heads = None) -> Edit:
    """Zero-ablate the activation."""
    return Edit(site, "zero", None, positions, heads)


def mean(
    site: str, reference: Tensor, *, over_positions: bool = False, positions: Positions = None, heads: Heads = None
) -> Edit:
    """Mean-ablate: replace with the mean of `reference`, the site's activations on a
    reference data set ([n, pos, ...] as `run.cache[site]` gives them). The mean is over
    examples, keeping positions, or also over positions with `over_positions=True`."""
    value = reference.float().mean(dim=(0, 1) if over_positions else 0)
    return Edit(site, "mean", value.to(reference.dtype), positions, heads)


def resample(site: str, reference: Tensor, *, seed: int = 0, positions: Positions = None, heads: Heads = None) -> Edit:
    """Resample-ablate: replace each example's activation by that of a random example of
    `reference` ([n, pos, ...] as `run.cache[site]` gives them), drawn with `seed`."""
    if reference.dim() < 2 or len(reference) == 0:
        raise MechscopeError("resample needs a non-empty reference batch [n, pos, ...] of recorded activations")
    return Edit(site, "resample", reference, positions, heads, seed)
