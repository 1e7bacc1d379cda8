"""Applying steering: a vector (or clamp) becomes edits at its sites, for every position
(`where="all"`), only the prompt's, or only the generated tokens' — during `generate`
with the KV cache too.

Per-row steering: a strength may be a tensor [batch], one per row (0 leaves a row exactly
unchanged: x + 0 is x), so different rows of one batch carry different vectors, strengths
or clamps in one forward (search's strength grid, the server's requests).

`prompt` / `generated` need to know where each forward's positions start; the `Offsets`
plan notes it, so they run inside `steered(model, ...)` (or `generate(model, ...)`).
During generation the prompt is left-padded to one width P; positions >= P are generated
(with the KV cache, `generate`'s default: without it every forward starts at 0 and counts
as a prompt).
The first generated token is predicted from the prompt, so where="generated" changes
tokens from the second one on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Union

import torch
from torch import Tensor

from .. import edits as edit_ops
from ..edits import Edit
from ..errors import MechscopeError
from ..hooks import Offsets, installed
from .vector import SteeringVector, check_strength

WHERE = ("all", "prompt", "generated")
Strength = Union[float, Tensor]
Term = Union[Edit, tuple]
"""An `Edit` (e.g. a clamp), or (vector, strength) / (vector, strength, where)."""


def check_where(where: str) -> None:
    if where not in WHERE:
        raise MechscopeError(f"where must be one of {', '.join(WHERE)}, got {where!r}")


def _value(direction: Tensor, strength: Strength) -> Tensor:
    """strength * direction: [d_model], or [batch, 1, d_model] for per-row strengths."""
    if isinstance(strength, Tensor):
        if strength.dim() != 1:
            raise MechscopeError(f"per-row strengths are a 1-d tensor [batch], got shape {tuple(strength.shape)}")
        return strength.to(direction)[:, None, None] * direction
    return direction * float(strength)


class PositionMask:
    """The positions of one forward that `where` selects, from the `Offsets` plan."""

    def __init__(self, where: str, offsets: Offsets | None):
        check_where(where)
        self.where, self.offsets = where, offsets

    def __call__(self, n: int, device) -> Tensor | None:
        """[n] bool, or None for every position."""
        if self.where == "all":
            return None
        if self.offsets is None or self.offsets.prompt is None:
            raise MechscopeError(
                f"where={self.where!r} needs to know which positions are the prompt's: run inside "
                "mechscope.steering.steered(model, ...) or use mechscope.steering.generate"
            )
        absolute = self.offsets.offset + torch.arange(n, device=device)
        return absolute < self.offsets.prompt if self.where == "prompt" else absolute >= self.offsets.prompt


class AddWhere:
    """x + value at the positions `where` selects (a `replace` edit's function)."""

    def __init__(self, value: Tensor, mask: PositionMask):
        self.value, self.mask = value, mask

    def __call__(self, x: Tensor) -> Tensor:
        value = self.value.to(device=x.device, dtype=x.dtype)
        chosen = self.mask(x.shape[1], x.device)
        steered = x + value
        return steered if chosen is None else torch.where(chosen[:, None], steered, x)


def vector_edits(
    vector: SteeringVector, strength: Strength = 1.0, *, where: str = "all", offsets: Offsets | None = None
) -> list[Edit]:
    """Edits adding `strength * direction` at each of the vector's sites. where="all" gives
    plain `mechscope.edits.add` edits (the same as `model.steer(site, v, strength)`)."""
    check_strength(strength)
    check_where(where)
    out = []
    for site, direction in vector.directions.items():
        value = _value(direction, strength)
        if where == "all":
            out.append(edit_ops.add(site, value))
        else:
            out.append(edit_ops.replace(site, AddWhere(value, PositionMask(where, offsets))))
    return out


def term_edits(terms: Sequence[Term], offsets: Offsets | None) -> list[Edit]:
    """Edits for (vector, strength[, where]) terms and ready-made edits (clamps)."""
    out: list[Edit] = []
    for term in terms:
        if isinstance(term, Edit):
            out.append(term)
            continue
        if not isinstance(term, tuple) or len(term) not in (2, 3) or not isinstance(term[0], SteeringVector):
            raise MechscopeError(f"steer with (vector, strength) or (vector, strength, where) tuples, got {term!r}")
        vector, strength, where = (*term, "all") if len(term) == 2 else term
        out.extend(vector_edits(vector, strength, where=where, offsets=offsets))
    return out


def bind(term: Any, offsets: Offsets) -> Any:
    """An edit whose function has `bind` (a clamp made before its `Offsets` existed), bound to them."""
    binder = getattr(term.value, "bind", None) if isinstance(term, Edit) else None
    if binder is not None:
        return dataclasses.replace(term, value=binder(offsets))
    return term


@contextmanager
def steered(model, *terms: Term) -> Iterator[Any]:
    """Steer every run and generate inside the block:

    with steered(model, (v, 4.0, "generated"), clamp(sae, {12: 5.0})):
        model.generate("def ")
    """
    offsets = Offsets()
    for term in terms:
        if isinstance(term, tuple) and term and isinstance(term[0], SteeringVector):
            term[0].check_model(model)
    edits = term_edits([bind(t, offsets) for t in terms], offsets)
    with installed(model.hf, model.table, [offsets]), model.edit(*edits):
        yield model


def generate(model, prompts: str | Sequence[str], *terms: Term, max_new_tokens: int = 20, **kwargs):
    """`model.generate` with the steering `terms` active (see `steered`)."""
    with steered(model, *terms):
        return model.generate(prompts, max_new_tokens=max_new_tokens, **kwargs)


def one_hot(row: int, rows: int, strength: float) -> Tensor:
    """Per-row strengths: `strength` at `row`, 0 elsewhere."""
    out = torch.zeros(rows)
    out[row] = strength
    return out
