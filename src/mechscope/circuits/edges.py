"""Edge-level patching: run a model with some edges of its `Graph` removed.

A receiver's input is the sum of its senders' outputs (plus biases). Removing the edge
s -> r gives r the *ablated* output of s (from the corrupted run, a mean, or zero)
while every other receiver still sees the current one. During one forward pass a small
recorder (`_Pass`) keeps each sender's current output as it is computed; where a
receiver reads the residual stream it adds

    delta_r = sum over removed edges s -> r of (ablated_s - current_s)

to its input: head receivers recompute their own q / k / v view from
``norm(resid_pre + delta_r)`` with the model's own norm module and the head's weights
(hook_q / hook_k / hook_v are projection outputs, before rotary, so this is exact), MLP
receivers edit the MLP norm's input (``hook_mlp_in``; in parallel blocks the MLP is
re-run on ``norm(resid_pre + delta)`` at ``hook_mlp_out``), and ``logits`` edits the last
``hook_resid_post``. Everything goes through `mechscope.edits.replace` callables.

The same pass can add a free tensor to every receiver's input (``deltas``); at zero it
changes nothing, and its gradient is d metric / d receiver input (used by EAP).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..edits import Edit, replace
from ..errors import MechscopeError
from ..hooks import GatherLogits
from .graph import Graph

log = logging.getLogger(__name__)

ABLATIONS = ("corrupt", "mean", "zero")


class EdgePatcher:
    """Runs `model` with edges of `graph` removed; see the module docstring."""

    def __init__(self, model, graph: Graph | None = None):
        self.model = model
        self.graph = graph or Graph.from_model(model)
        a, L = model.adapter, model.dims.n_layers
        self.attn_norm = [model.block_module(layer, a.attn_in_norm) for layer in range(L)]
        self.qkv = [
            [
                (model.W_Q(layer), model.b_Q(layer)),
                (model.W_K(layer), model.b_K(layer)),
                (model.W_V(layer), model.b_V(layer)),
            ]
            for layer in range(L)
        ]
        if self.graph.parallel and self.graph.has_mlp:
            if a.resid_mid is None or a.resid_mid.boundary != "in" or a.mlp_out.boundary != "out":
                raise MechscopeError(f"{model.name}: parallel blocks need the MLP norm and module in the adapter table")
            self.mlp_norm = [model.block_module(layer, a.resid_mid.module) for layer in range(L)]
            self.mlp = [model.block_module(layer, a.mlp_out.module) for layer in range(L)]

    # Sender outputs

    def sender_values(self, tokens: Tensor, mask: Tensor | None = None) -> Float[Tensor, "batch pos sender d_model"]:
        """Every sender's output on `tokens`, stacked along a sender axis."""
        state = _Pass(self, None, None, None, None)
        last = f"blocks.{self.graph.n_layers - 1}.hook_resid_post"  # every sender is out by then: stop there
        with torch.no_grad():
            self.model.run(tokens, attention_mask=mask, edits=state.edits(), record=[last], logits=False)
        return state.stacked()

    def ablated_values(self, task, ablation: str = "corrupt") -> tuple[Tensor, Tensor]:
        """(clean sender outputs, the outputs that removed edges carry instead)."""
        if ablation not in ABLATIONS:
            raise MechscopeError(f"unknown ablation {ablation!r}: choose one of {list(ABLATIONS)}")
        clean = self.sender_values(task.clean, task.mask)
        if ablation == "corrupt":
            return clean, self.sender_values(task.corrupt, task.mask)
        if ablation == "mean":
            return clean, clean.mean(0, keepdim=True)
        return clean, torch.zeros_like(clean[:1])

    # Patched runs

    def run(
        self,
        tokens: Tensor,
        ablated: Tensor,
        removed: Bool[Tensor, "sender receiver"] | None = None,
        *,
        mask: Tensor | None = None,
        deltas: dict[int, Tensor] | None = None,
        embed: Callable[[Tensor], Tensor] | None = None,
        grad: bool = False,
        logit_positions: Tensor | None = None,
    ) -> Tensor:
        """Logits [batch, pos, vocab] of `tokens` with the `removed` edges carrying `ablated`
        ([batch or 1, pos, sender, d_model]). `deltas` maps a group index of
        `graph.groups()` to a tensor added to those receivers' inputs; `embed` transforms
        the embedding output (e.g. to interpolate it). logit_positions [batch]: unembed only
        there (logits [batch, vocab]; `hooks.GatherLogits`)."""
        if removed is not None:
            if removed.shape != self.graph.allowed.shape:
                raise MechscopeError(
                    f"removed must be a [sender, receiver] mask of shape "
                    f"{tuple(self.graph.allowed.shape)}, got {tuple(removed.shape)}"
                )
            if bool((removed & ~self.graph.allowed).any()):
                raise MechscopeError(
                    "removed marks pairs that are not edges of the graph (a receiver before its sender)"
                )
        state = _Pass(self, removed, ablated, deltas, embed)
        plans = [] if logit_positions is None else [GatherLogits(logit_positions)]
        out = self.model.run(tokens, attention_mask=mask, edits=state.edits(), grad=grad, plans=plans).logits
        state.check_complete()
        return out


class _Pass:
    """The state of one patched forward pass: sender outputs recorded so far."""

    def __init__(self, patcher: EdgePatcher, removed, ablated, deltas, embed):
        self.p, self.g = patcher, patcher.graph
        self.removed = None if removed is None else removed.to(torch.bool)
        self.ablated, self.deltas, self.embed = ablated, deltas or {}, embed
        self.current: list[Tensor] = []
        self.resid_pre: dict[int, Tensor] = {}

    def stacked(self) -> Tensor:
        return torch.cat(self.current, dim=2)

    def check_complete(self) -> None:
        got = sum(t.shape[2] for t in self.current)
        if got != len(self.g.senders):
            raise MechscopeError(f"internal: recorded {got} sender outputs for {len(self.g.senders)} senders")

    def edits(self) -> list[Edit]:
        g, L = self.g, self.g.n_layers
        edits = [replace(f"blocks.{layer}.hook_resid_pre", self._resid_pre(layer)) for layer in range(L)]
        for index, (kind, layer, start, n, before) in enumerate(g.groups()):
            active = self._active(index, start, n, before)
            if kind in "qkv" and active:
                edits.append(replace(f"blocks.{layer}.attn.hook_{kind}", self._head_input(index, kind, layer)))
            elif kind == "mlp":
                if active and not g.parallel:
                    edits.append(replace(f"blocks.{layer}.hook_mlp_in", self._add_delta(index)))
                edits.append(
                    replace(f"blocks.{layer}.hook_mlp_out", self._mlp_out(index, layer, active and g.parallel))
                )
            elif kind == "logits" and active:
                edits.append(replace(f"blocks.{L - 1}.hook_resid_post", self._add_delta(index)))
        edits += [replace(f"blocks.{layer}.attn.hook_z", self._heads_out(layer)) for layer in range(L)]
        return edits

    def _active(self, index: int, start: int, n: int, before: int) -> bool:
        return index in self.deltas or (
            self.removed is not None and bool(self.removed[:before, start : start + n].any())
        )

    def _delta(self, index: int) -> Tensor | None:
        """[batch, pos, receiver, d_model] to add to the inputs of one receiver group."""
        _, _, start, n, before = self.g.groups()[index]
        delta = self.deltas.get(index)
        if self.removed is None:
            return delta
        chosen = self.removed[:before, start : start + n]
        rows = chosen.any(1).nonzero()[:, 0]
        if len(rows) == 0:
            return delta
        current = self.stacked()[:, :, rows.to(self.current[0].device)]
        ablated = self.ablated[:, : current.shape[1]].to(current)[:, :, rows.to(current.device)]
        weight = chosen[rows].to(current)
        patch = torch.einsum("bpsd,sr->bprd", ablated - current, weight)
        return patch if delta is None else patch + delta

    # Callables for the edits

    def _resid_pre(self, layer: int):
        def fn(x: Tensor) -> Tensor:
            if layer == 0:
                x = self.embed(x) if self.embed is not None else x
                self.current.append(x[:, :, None])
            self.resid_pre[layer] = x
            return x

        return fn

    def _heads_out(self, layer: int):
        def fn(z: Tensor) -> Tensor:
            per_head, _ = self.p.model.head_results(z, layer)
            self.current.append(per_head)
            return z

        return fn

    def _head_input(self, index: int, kind: str, layer: int):
        W, b = self.p.qkv[layer]["qkv".index(kind)]

        def fn(x: Tensor) -> Tensor:
            delta = self._delta(index)
            if delta is None:
                return x
            normed = self.p.attn_norm[layer](self.resid_pre[layer][:, :, None] + delta)
            return torch.einsum("bprd,rde->bpre", normed, W.to(normed.dtype)) + b.to(normed.dtype)

        return fn

    def _add_delta(self, index: int):
        def fn(x: Tensor) -> Tensor:
            delta = self._delta(index)
            return x if delta is None else x + delta[:, :, 0]

        return fn

    def _mlp_out(self, index: int, layer: int, active: bool):
        def fn(x: Tensor) -> Tensor:
            if active:  # parallel block: re-run the MLP on the patched resid_pre
                delta = self._delta(index)
                if delta is not None:
                    x = self.p.mlp[layer].forward(self.p.mlp_norm[layer](self.resid_pre[layer] + delta[:, :, 0]))
            self.current.append(x[:, :, None])
            return x

        return fn
