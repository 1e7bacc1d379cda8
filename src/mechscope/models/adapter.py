"""An adapter is one table that tells mechscope where a model family keeps each part.

Adding an architecture family means writing one `Adapter(...)` in `families.py`:
module paths (relative to the Hugging Face *base* model, and for blocks relative to
one block), which module boundary each standard site is read at, and how the
attention projections are laid out. No family gets code of its own, and no
Hugging Face forward is ever patched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Where a site is read: the output of a module, or its first input (the hidden states).
Boundary = Literal["in", "out"]

# How the q/k/v projections are stored:
#   separate   - three Linear modules (Llama, Gemma 2, BERT)
#   gpt2_fused - one Conv1D whose output is [q | k | v], each [head * d_head]
#   neox_fused - one Linear whose output is [head, (q, k, v), d_head]
QKVLayout = Literal["separate", "gpt2_fused", "neox_fused"]


@dataclass(frozen=True)
class Tap:
    """A module boundary in one block: `module` is a path relative to the block."""

    module: str
    boundary: Boundary = "out"


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
    mlp_down: str
    """MLP output projection; its input is `mlp.hook_post` (the neurons)."""
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
    unembed: str | None = None
    """Head mapping the residual stream to logits, relative to the full model, when it is
    more than the output embedding (BERT's transform + decoder); W_U is always read from
    Hugging Face's `get_output_embeddings()`."""
    attn_post_norm: str | None = None
    """Norm applied to the attention output before it joins the residual (Gemma 2)."""
    qkv_layout: QKVLayout = "separate"
    conv1d: bool = False
    """Weights stored [in, out] (GPT-2's Conv1D) instead of nn.Linear's [out, in]."""
    norm_gain_offset: float = 0.0
    """RMSNorm multiplies by (offset + weight): 1.0 for Gemma, 0.0 elsewhere."""
    parallel_attr: str | None = None
    """Config attribute that, when true, makes attention and MLP read the same input."""
    softcap_attr: str | None = None
    """Config attribute holding the final-logit soft-capping value (Gemma 2)."""
    notes: tuple[str, ...] = field(default=())
    """Family conventions shown to users (`mechscope info`)."""

    def block(self, layer: int, path: str) -> str:
        """Full path, relative to the base model, of a module inside block `layer`."""
        return f"{self.blocks}.{layer}.{path}"
