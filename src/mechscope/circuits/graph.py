"""`Graph`: the computational graph that circuit discovery prunes.

Nodes write to the residual stream (*senders*) or read from it (*receivers*):

- senders, in forward order: ``embed`` (token + position embeddings: everything in
  ``blocks.0.hook_resid_pre``), every attention head ``a{l}.h{h}`` (its share of the
  attention output, from ``attn.hook_z`` through W_O), every MLP ``m{l}`` (``hook_mlp_out``);
- receivers: each head's query input ``a{l}.h{h}.q``, its key and value inputs
  ``a{l}.h{h}.k`` / ``a{l}.h{h}.v`` (one per *KV head*, ``a{l}.kv{g}.k`` / ``.v``, under
  grouped-query attention, where several query heads share one key/value projection),
  every MLP's input ``m{l}``, and ``logits`` (the final residual stream).

An edge s -> r exists when s is computed before r reads the residual stream: heads of
layer l read ``resid_pre`` of layer l; an MLP reads ``resid_mid`` (so also the heads of
its own layer) in sequential blocks and ``resid_pre`` in parallel blocks (GPT-NeoX);
``logits`` reads everything. Attention biases are not nodes: they are always kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from jaxtyping import Bool
from torch import Tensor

from ..errors import MechscopeError


@dataclass(frozen=True)
class Graph:
    """The sender / receiver graph of one decoder (see the module docstring); its shape only.

    Invariants: node names and their order are fixed by the five fields (`senders`,
    `receivers`); `allowed[s, r]` is True exactly for the edges, i.e. when s is computed before
    r reads the residual stream; post-LN models and models without an LM head are refused.

        graph = Graph.from_model(model)
        graph.senders[:3], len(graph.edges)    # ('embed', 'a0.h0', 'a0.h1'), ...
    """

    n_layers: int
    """Transformer blocks."""
    n_heads: int
    """Query heads per layer."""
    n_kv_heads: int
    """Key/value heads per layer (= n_heads without grouped-query attention)."""
    has_mlp: bool
    """False for attention-only models: no MLP nodes."""
    parallel: bool
    """Attention and MLP of one block both read resid_pre (GPT-NeoX's parallel residual)."""

    @classmethod
    def from_model(cls, model) -> "Graph":
        """The graph of a decoder-only model with an LM head."""
        if not model.has_lm_head:
            raise MechscopeError(f"{model.name} has no LM head: circuit discovery needs logits")
        if model.adapter.attn_in_norm is None:
            raise MechscopeError(
                f"{model.name} is a post-LN {model.adapter.family} model: edge patching needs "
                "pre-norm blocks (each sublayer reads the residual stream through its own norm)"
            )
        parallel = model.adapter.parallel  # resolved from the config when the model was wrapped
        d = model.dims
        return cls(d.n_layers, d.n_heads, d.n_kv_heads, bool(d.d_mlp), parallel)

    # Nodes

    @property
    def per_layer(self) -> int:
        """Senders per layer: the heads, then the MLP."""
        return self.n_heads + int(self.has_mlp)

    @property
    def gqa(self) -> bool:
        return self.n_kv_heads != self.n_heads

    @cached_property
    def senders(self) -> tuple[str, ...]:
        names = ["embed"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)]
            names += [f"m{layer}"] if self.has_mlp else []
        return tuple(names)

    def kv_name(self, layer: int, group: int) -> str:
        return f"a{layer}.kv{group}" if self.gqa else f"a{layer}.h{group}"

    @cached_property
    def receivers(self) -> tuple[str, ...]:
        names = []
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}.q" for h in range(self.n_heads)]
            names += [f"{self.kv_name(layer, g)}.k" for g in range(self.n_kv_heads)]
            names += [f"{self.kv_name(layer, g)}.v" for g in range(self.n_kv_heads)]
            names += [f"m{layer}"] if self.has_mlp else []
        return tuple(names + ["logits"])

    def sender_index(self, layer: int, head: int | None = None) -> int:
        """Index of head `head` of layer `layer` (None: the layer's MLP) among the senders."""
        return 1 + layer * self.per_layer + (self.n_heads if head is None else head)

    def groups(self) -> list[tuple[str, int, int, int, int]]:
        """The receivers read at one place: (kind, layer, first receiver, receiver count,
        senders before it). kind is q, k, v, mlp or logits; the senders that an edge may
        come from are exactly the first `senders before` ones."""
        out, start, H, G = [], 0, self.n_heads, self.n_kv_heads
        for layer in range(self.n_layers):
            before = 1 + layer * self.per_layer
            for kind, n in (("q", H), ("k", G), ("v", G)):
                out.append((kind, layer, start, n, before))
                start += n
            if self.has_mlp:
                out.append(("mlp", layer, start, 1, before + (0 if self.parallel else H)))
                start += 1
        out.append(("logits", self.n_layers, start, 1, len(self.senders)))
        return out

    @cached_property
    def allowed(self) -> Bool[Tensor, "sender receiver"]:
        """allowed[s, r]: whether the edge s -> r exists."""
        mask = torch.zeros(len(self.senders), len(self.receivers), dtype=torch.bool)
        for _, _, start, n, before in self.groups():
            mask[:before, start : start + n] = True
        return mask

    # Edges

    @cached_property
    def edges(self) -> list[tuple[str, str]]:
        """Every edge (sender, receiver), ordered by receiver then sender."""
        s, r = self.allowed.T.nonzero(as_tuple=True)[::-1]
        return [(self.senders[i], self.receivers[j]) for i, j in zip(s.tolist(), r.tolist())]

    @cached_property
    def edge_index(self) -> tuple[Tensor, Tensor]:
        """(sender indices, receiver indices) of `edges`, in the same order."""
        s, r = self.allowed.T.nonzero(as_tuple=True)[::-1]
        return s, r

    @cached_property
    def _position(self) -> dict[tuple[str, ...], int]:
        return {edge: i for i, edge in enumerate(self.edges)}

    def index_of(self, edge: tuple[str, str]) -> int:
        try:
            return self._position[tuple(edge)]
        except KeyError:
            raise MechscopeError(
                f"edge {edge[0]} -> {edge[1]} is not in this model's graph (senders look like "
                f"'a0.h1', receivers like 'a1.h2.k' or 'logits')"
            ) from None

    def mask_of(self, edges) -> Bool[Tensor, "sender receiver"]:
        """A [sender, receiver] mask that is True on the given edges."""
        mask = torch.zeros_like(self.allowed)
        for edge in edges:
            i = self.index_of(edge)
            mask[self.edge_index[0][i], self.edge_index[1][i]] = True
        return mask

    def spec(self) -> dict:
        return {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "has_mlp": self.has_mlp,
            "parallel": self.parallel,
        }


def node_of(receiver: str) -> str:
    """The node a receiver belongs to: ``a1.h2.q`` -> ``a1.h2``, ``a1.kv0.k`` -> ``a1.kv0``."""
    return receiver.rsplit(".", 1)[0] if receiver.endswith((".q", ".k", ".v")) else receiver


def layer_of(node: str, n_layers: int) -> float:
    """Where a node sits vertically: embed -1, heads at their layer, MLPs half a layer
    later, logits at n_layers."""
    if node == "embed":
        return -1.0
    if node == "logits":
        return float(n_layers)
    if node.startswith("m"):
        return int(node[1:]) + 0.5
    return float(int(node[1:].split(".")[0]))
