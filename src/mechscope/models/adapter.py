"""An adapter is one table that tells mechscope where a model family keeps each part.

Adding an architecture family means writing one `Adapter(...)` in `families.py` (or
`families_decoders.py`, `families_moe.py`, `families_encoders.py`):
module paths (relative to the Hugging Face *base* model, and for blocks relative to
one block), which module boundary each standard site is read at, and how the
attention projections are laid out. No family gets code of its own, and no
Hugging Face forward is ever patched.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from ..errors import MechscopeError

# Where a site is read: the output of a module, or its first input (the hidden states).
Boundary = Literal["in", "out"]

# How the q/k/v projections are stored:
#   separate   - three Linear modules (Llama, Gemma 2, BERT, most newer families)
#   gpt2_fused - one Conv1D whose output is [q | k | v], each [head * d_head]
#   neox_fused - one Linear whose output is [head, (q, k, v), d_head]
#   concat     - one Linear whose output is [q | k | v]: head * d_head, then kv_head * d_head
#                twice (Phi-3, multi-query GPT-BigCode and Falcon; GPT-2's layout with kv_head = head)
#   grouped    - one Linear whose output is [kv_head, (its head / kv_head queries, k, v), d_head]
#                (Falcon's new decoder architecture: 40B, 180B, Falcon 2)
QKVLayout = Literal["separate", "gpt2_fused", "neox_fused", "concat", "grouped"]


@dataclass(frozen=True)
class Variant:
    """A layout that a config switch selects: when `config.<when>` is truthy (and each
    `(attr, value)` in `equal` holds), the q/k/v projection is laid out as `qkv_layout`
    with `n_kv_heads` key/value heads (an int, or the config attribute holding it), and
    the table's `fields` take the values given (e.g. another attention-input norm)."""

    when: str
    qkv_layout: QKVLayout
    n_kv_heads: int | str
    equal: tuple[tuple[str, object], ...] = ()
    fields: tuple[tuple[str, object], ...] = ()

    def applies(self, config) -> bool:
        return bool(getattr(config, self.when, False)) and all(getattr(config, a, None) == v for a, v in self.equal)


@dataclass(frozen=True)
class Requirement:
    """A config value this table relies on: `config.<attr>` must equal `value` (or, with
    `same_as`, the value of that other attribute); otherwise loading fails with `reason`."""

    attr: str
    reason: str
    value: object = None
    same_as: str | None = None

    def holds(self, config) -> bool:
        expected = getattr(config, self.same_as, None) if self.same_as else self.value
        return getattr(config, self.attr, None) == expected


@dataclass(frozen=True)
class Tap:
    """A module boundary in one block: `module` is a path relative to the block."""

    module: str
    boundary: Boundary = "out"
    copy: bool = False
    """The model changes this tensor in place after the module returns it (Falcon adds the
    attention output into the MLP's): read and write copies."""


@dataclass(frozen=True)
class Adapter:
    """Where one architecture family keeps each part; see the module docstring."""

    family: str
    """Human name of the family, shown in `mechscope info`."""
    model_types: tuple[str, ...]
    """Hugging Face `config.model_type` values this table serves."""
    blocks: str
    """Path of the ModuleList of blocks, relative to the base model."""
    embed: str
    """Token embedding module (its output is `hook_embed`)."""
    q: str
    """Query projection (or the fused qkv projection), relative to a block."""
    k: str
    v: str
    o: str
    """Attention output projection; its input is `hook_z`."""
    attention: str
    """Attention module whose output[1] is the attention pattern (eager attention)."""
    attn_out: Tap
    """What the attention sublayer adds to the residual stream."""
    mlp_out: Tap
    """What the MLP sublayer adds to the residual stream."""
    mlp_in: str
    """MLP input projection (up projection for gated MLPs)."""
    mlp_down: str | None
    """MLP output projection; its input is `mlp.hook_post` (the neurons). None for MoE."""
    resid_mid: Tap | None
    """Residual stream between attention and MLP; None for parallel blocks."""
    attn_in_norm: str | None = None
    """Norm applied to the residual stream before attention (None for post-LN BERT)."""
    mlp_gate: str | None = None
    """Gate projection of gated MLPs (SwiGLU / GeGLU)."""
    pos_embed: str | None = None
    """Learned absolute position embedding, if any (`hook_pos_embed`)."""
    final_norm: str | None = None
    """Final norm, relative to the base model (`ln_final.hook_normalized`). Hugging Face's
    last `hidden_states` entry is the final-normed stream when a family has one, so there
    `hidden_states[-1] == final_norm(blocks.{L-1}.hook_resid_post)`."""
    unembed: str | tuple[str, ...] | None = None
    """Head mapping the residual stream to logits, relative to the full model, when it is
    more than the output embedding (BERT's transform + decoder), or the modules it applies
    in turn (DistilBERT's); W_U is always read from Hugging Face's `get_output_embeddings()`."""
    attn_post_norm: str | None = None
    """Norm applied to the attention output before it joins the residual (Gemma 2)."""
    qkv_layout: QKVLayout = "separate"
    conv1d: bool = False
    """Weights stored [in, out] (GPT-2's Conv1D) instead of nn.Linear's [out, in]."""
    norm_gain_offset: float = 0.0
    """RMSNorm multiplies by (offset + weight): 1.0 for Gemma, 0.0 elsewhere."""
    parallel_attr: str | None = None
    """Config attribute that, when true, makes attention and MLP read the same input."""
    parallel: bool = False
    """Attention and MLP read the same input: no resid_mid. Set in the table where always
    so (GPT-J, Phi, Cohere); `resolve` sets it where `parallel_attr` says so."""
    mlp_post_norm: str | None = None
    """Norm applied to the MLP output before it joins the residual (Gemma 2/3, OLMo 2)."""
    gate_up_fused: bool = False
    """`mlp_gate` and `mlp_in` are one Linear whose output is [gate | up] (Phi-3)."""
    variants: tuple[Variant, ...] = ()
    """Config switches that change the q/k/v layout; the first that applies wins."""
    kv_heads_attr: str = "num_key_value_heads"
    """Config attribute holding the number of key/value heads (else: as many as heads)."""
    requires: tuple[Requirement, ...] = ()
    """Config values this table relies on; others are refused with their reason."""
    residual_scale_attr: str | None = None
    """Config attribute by which the residual multiplies each sublayer's output (Granite's
    residual_multiplier); hook_attn_out / hook_mlp_out are read after that scaling."""
    logit_scale_attr: str | None = None
    """Config attribute that multiplies the logits (Cohere's logit_scale)."""
    logit_divisor_attr: str | None = None
    """Config attribute that divides the logits (Granite's logits_scaling)."""
    mlp_flat_rows: bool = False
    """The MLP runs on tokens flattened to [batch * pos, d_model] (OPT); sites unflatten them."""
    pos_embed_per_prompt: bool = False
    """Position embeddings are computed per prompt from its mask (OPT): [batch, pos, d_model]."""
    moe_router: str | None = None
    """Router of a mixture-of-experts MLP, relative to a block; its output[0] is the router
    logits over flattened tokens (`mlp.hook_router_logits`). MoE tables set mlp_down=None."""
    experts_attr: str | None = None
    """Config attribute holding the number of experts."""
    d_mlp_attr: str | None = None
    """Config attribute holding each expert's width (MoE tables, whose d_mlp is per expert)."""
    unavailable: tuple[tuple[str, str], ...] = ()
    """(site kind, reason) for TransformerLens sites this family cannot provide exactly."""
    softcap_attr: str | None = None
    """Config attribute holding the final-logit soft-capping value (Gemma 2)."""
    notes: tuple[str, ...] = field(default=())
    """Family conventions shown to users (`mechscope info`)."""

    # Values that depend on one model's config (see `resolve`)
    n_kv_heads: int | None = None
    """Key/value heads fixed by a variant (multi-query: 1); None: read `kv_heads_attr`."""
    residual_scale: float = 1.0
    logit_scale: float = 1.0
    n_experts: int = 0

    def resolve(self, config) -> "Adapter":
        """This table made concrete for one model's config: the q/k/v variant in force,
        the scales read; a config this table cannot serve is refused with the reason."""
        for req in self.requires:
            if not req.holds(config):
                raise MechscopeError(
                    f"{self.family} with {req.attr}={getattr(config, req.attr, None)!r} is not supported: {req.reason}"
                )
        changes: dict = {}
        if self.parallel_attr and getattr(config, self.parallel_attr, False):
            changes["parallel"] = True
        for variant in self.variants:
            if variant.applies(config):
                kv = variant.n_kv_heads
                changes.update(
                    qkv_layout=variant.qkv_layout,
                    n_kv_heads=kv if isinstance(kv, int) else getattr(config, kv),
                    **dict(variant.fields),
                )
                break
        if self.residual_scale_attr:
            changes["residual_scale"] = float(getattr(config, self.residual_scale_attr))
        scale = float(getattr(config, self.logit_scale_attr, None) or 1.0) if self.logit_scale_attr else 1.0
        if self.logit_divisor_attr:
            scale /= float(getattr(config, self.logit_divisor_attr, None) or 1.0)
        changes["logit_scale"] = scale
        if self.experts_attr:
            changes["n_experts"] = int(getattr(config, self.experts_attr))
        return replace(self, **changes)

    @property
    def post_ln(self) -> bool:
        """Post-LN blocks (BERT): the residual stream itself is renormalised after each
        sublayer, so it is no sum of components. OLMo 2's post-norms act on the sublayer
        outputs only and leave the stream a sum."""
        return self.attn_in_norm is None and self.attn_post_norm is None

    def block(self, layer: int, path: str) -> str:
        """Full path, relative to the base model, of a module inside block `layer`."""
        return f"{self.blocks}.{layer}.{path}"
