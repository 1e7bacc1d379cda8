"""Weights read through the adapter table, in TransformerLens shapes.

Every projection is returned as [in, out] (so activations multiply on the left), per
head where attention is concerned: W_Q/W_K/W_V [head, d_model, d_head] (K and V have
the model's number of key/value heads), W_O [head, d_head, d_model]. Tensors are views
of the live parameters (no copies; grouped K/V heads are never expanded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor, nn

from .norms import frozen_norm
from .sites import FusedQKVView

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .models.adapter import Adapter
    from .sites import Dims


def _param(module: nn.Module, name: str) -> Tensor:
    """A module's weight or bias (nn.Module's attribute lookup is typed Tensor | Module)."""
    return getattr(module, name)


def _bias(module: nn.Module) -> Tensor | None:
    return getattr(module, "bias", None)


def _in_out(module: nn.Module, conv1d: bool) -> Tensor:
    weight = _param(module, "weight")
    return weight if conv1d else weight.T


class WeightAccess:
    """Mixed into `Model`; needs `hf`, `adapter`, `dims`, `module(path)`, `block_module(l, path)`."""

    if TYPE_CHECKING:  # what `Model` provides (declared for the type checker only)
        hf: PreTrainedModel
        adapter: Adapter
        dims: Dims
        name: str

        def module(self, path: str) -> nn.Module: ...
        def block_module(self, layer: int, path: str) -> nn.Module: ...

    # Embedding and unembedding

    @property
    def W_E(self) -> Float[Tensor, "vocab d_model"]:
        return _param(self.module(self.adapter.embed), "weight")

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"] | None:
        return _param(self.module(self.adapter.pos_embed), "weight") if self.adapter.pos_embed else None

    @property
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        return _param(self._output_embedding(), "weight").T

    @property
    def b_U(self) -> Float[Tensor, " vocab"]:
        bias = _bias(self._output_embedding())
        return torch.zeros(self.dims.d_vocab, device=self.W_U.device) if bias is None else bias

    def _output_embedding(self) -> nn.Module:
        out = self.hf.get_output_embeddings() if hasattr(self.hf, "get_output_embeddings") else None
        if out is None:
            from .errors import MechscopeError

            raise MechscopeError(f"{self.name} has no unembedding (it is an encoder without an LM head)")
        return out

    # Attention, per head

    def _qkv(self, layer: int, part: int, bias: bool) -> Tensor:
        a, d = self.adapter, self.dims
        module = self.block_module(layer, (a.q, a.k, a.v)[part])
        n = d.n_heads if part == 0 else d.n_kv_heads
        w = _bias(module) if bias else _in_out(module, a.conv1d)
        if w is None:
            return torch.zeros(n, d.d_head, device=_param(module, "weight").device)
        if a.qkv_layout == "separate":
            w = w.unflatten(-1, (n, d.d_head))
        else:  # the same split the hook_q / hook_k / hook_v sites make of the fused output
            w = FusedQKVView(part, a.qkv_layout, d.n_heads, d.d_head, d.n_kv_heads).read(w)
        return w if bias else w.permute(1, 0, 2)

    def W_Q(self, layer: int) -> Float[Tensor, "head d_model d_head"]:
        return self._qkv(layer, 0, False)

    def W_K(self, layer: int) -> Float[Tensor, "kv_head d_model d_head"]:
        return self._qkv(layer, 1, False)

    def W_V(self, layer: int) -> Float[Tensor, "kv_head d_model d_head"]:
        return self._qkv(layer, 2, False)

    def b_Q(self, layer: int) -> Float[Tensor, "head d_head"]:
        return self._qkv(layer, 0, True)

    def b_K(self, layer: int) -> Float[Tensor, "kv_head d_head"]:
        return self._qkv(layer, 1, True)

    def b_V(self, layer: int) -> Float[Tensor, "kv_head d_head"]:
        return self._qkv(layer, 2, True)

    def W_O(self, layer: int) -> Float[Tensor, "head d_head d_model"]:
        o = self.block_module(layer, self.adapter.o)
        return _in_out(o, self.adapter.conv1d).unflatten(0, (self.dims.n_heads, self.dims.d_head))

    def b_O(self, layer: int) -> Float[Tensor, " d_model"]:
        o = self.block_module(layer, self.adapter.o)
        bias = _bias(o)
        return torch.zeros(self.dims.d_model, device=_param(o, "weight").device) if bias is None else bias

    # MLP

    def _mlp(self, layer: int, path: str | None) -> nn.Module:
        if path is None or self.adapter.mlp_down is None:  # path is None only for mlp_down
            from .errors import MechscopeError

            raise MechscopeError(
                f"{self.adapter.family} has a mixture-of-experts MLP whose experts live in one fused "
                "module: there is no single W_in / W_out (read the experts' parameters directly)"
            )
        return self.block_module(layer, path)

    def _gate_up(self, layer: int, part: int, bias: bool) -> Tensor | None:
        """Half `part` (0: gate, 1: up) of a fused [gate | up] projection (Phi-3)."""
        module = self._mlp(layer, self.adapter.mlp_in)
        w = _bias(module) if bias else _in_out(module, self.adapter.conv1d)
        return None if w is None else w.chunk(2, dim=-1)[part]

    def W_in(self, layer: int) -> Float[Tensor, "d_model d_mlp"]:
        if self.adapter.gate_up_fused:
            up = self._gate_up(layer, 1, False)
            assert up is not None  # a weight, unlike a bias, is always there
            return up
        return _in_out(self._mlp(layer, self.adapter.mlp_in), self.adapter.conv1d)

    def W_gate(self, layer: int) -> Float[Tensor, "d_model d_mlp"] | None:
        gate = self.adapter.mlp_gate
        if gate is not None and self.adapter.gate_up_fused:
            return self._gate_up(layer, 0, False)
        return None if gate is None else _in_out(self._mlp(layer, gate), self.adapter.conv1d)

    def W_out(self, layer: int) -> Float[Tensor, "d_mlp d_model"]:
        return _in_out(self._mlp(layer, self.adapter.mlp_down), self.adapter.conv1d)

    def b_in(self, layer: int) -> Tensor | None:
        if self.adapter.gate_up_fused:
            return self._gate_up(layer, 1, True)
        return _bias(self._mlp(layer, self.adapter.mlp_in))

    def b_out(self, layer: int) -> Tensor | None:
        return _bias(self._mlp(layer, self.adapter.mlp_down))

    # Functions of the residual stream

    def final_norm(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The model's final norm (identity for families without one)."""
        return self.module(self.adapter.final_norm)(resid) if self.adapter.final_norm else resid

    def unembed(self, normalized: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Logits from the final-normed residual: the LM head, the family's logit scale, then
        soft-capping if any."""
        path = self.adapter.unembed
        if isinstance(path, tuple):  # modules applied in turn (DistilBERT's head)
            logits = normalized
            for part in path:
                logits = self.hf.get_submodule(part)(logits)
        else:
            logits = (self.hf.get_submodule(path) if path else self._output_embedding())(normalized)
        if self.adapter.logit_scale != 1.0:
            logits = logits * self.adapter.logit_scale
        cap = getattr(self.hf.config, self.adapter.softcap_attr, None) if self.adapter.softcap_attr else None
        return torch.tanh(logits / cap) * cap if cap else logits

    def to_logits(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Final norm + unembedding: what the model's own head makes of a residual stream."""
        return self.unembed(self.final_norm(resid))

    def head_results(self, z: Float[Tensor, "batch pos head d_head"], layer: int) -> tuple[Tensor, Tensor]:
        """Each head's contribution to `hook_attn_out`, and the remaining bias term.

        Returns (per_head [batch, pos, head, d_model], bias [..., d_model]) with
        per_head.sum(-2) + bias == hook_attn_out. Where the family normalises the
        attention output before the residual (Gemma 2), the norm's scale is frozen at
        the actual output, so the split stays exact. Where the residual scales each sublayer
        (Granite), both parts carry that scale, as hook_attn_out does.
        """
        scale = self.adapter.residual_scale
        per_head = torch.einsum("bphd,hdm->bphm", z, self.W_O(layer).to(z.dtype))
        bias = self.b_O(layer).to(z.dtype)
        if scale != 1.0:
            per_head, bias = per_head * scale, bias * scale
        if self.adapter.attn_post_norm is None:
            return per_head, bias
        norm = self.block_module(layer, self.adapter.attn_post_norm)
        linear = frozen_norm(norm, per_head.sum(-2) + bias, self.adapter.norm_gain_offset)
        norm_bias = _bias(norm)
        extra = norm_bias if norm_bias is not None else 0
        return linear(per_head), linear(bias.expand(per_head.shape[:-2] + bias.shape)) + extra
