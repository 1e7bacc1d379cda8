"""The architecture families mechscope supports: one `Adapter` table each.

To add a family, append one table to `FAMILIES` (see `adapter.py` for the fields;
newer decoders live in `families_decoders.py`, mixtures of experts in `families_moe.py`,
encoders beyond BERT in `families_encoders.py`)
and add a tiny config to `tests/models/tiny.py`; the oracle tests then check it against
Hugging Face's own outputs.
"""

from __future__ import annotations

from ..errors import MechscopeError
from .adapter import Adapter, Tap
from .families_decoders import DECODERS
from .families_encoders import ENCODERS
from .families_moe import MOE

GPT2 = Adapter(
    family="GPT-2",
    model_types=("gpt2",),
    blocks="h",
    embed="wte",
    pos_embed="wpe",
    q="attn.c_attn",
    k="attn.c_attn",
    v="attn.c_attn",
    o="attn.c_proj",
    attention="attn",
    attn_in_norm="ln_1",
    attn_out=Tap("attn.c_proj"),
    mlp_out=Tap("mlp"),
    mlp_in="mlp.c_fc",
    mlp_down="mlp.c_proj",
    resid_mid=Tap("ln_2", "in"),
    final_norm="ln_f",
    qkv_layout="gpt2_fused",
    conv1d=True,
    notes=("fused Conv1D c_attn [q | k | v], weights stored [in, out]; learned positions",),
)

NEOX = Adapter(
    family="GPT-NeoX (Pythia)",
    model_types=("gpt_neox",),
    blocks="layers",
    embed="embed_in",
    q="attention.query_key_value",
    k="attention.query_key_value",
    v="attention.query_key_value",
    o="attention.dense",
    attention="attention",
    attn_in_norm="input_layernorm",
    attn_out=Tap("attention.dense"),
    mlp_out=Tap("mlp"),
    mlp_in="mlp.dense_h_to_4h",
    mlp_down="mlp.dense_4h_to_h",
    resid_mid=Tap("post_attention_layernorm", "in"),
    parallel_attr="use_parallel_residual",
    final_norm="final_layer_norm",
    qkv_layout="neox_fused",
    notes=("parallel attention + MLP (use_parallel_residual): no hook_resid_mid",),
)

LLAMA = Adapter(
    family="Llama (Mistral, Qwen2)",
    model_types=("llama", "mistral", "qwen2"),
    blocks="layers",
    embed="embed_tokens",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    attention="self_attn",
    attn_in_norm="input_layernorm",
    attn_out=Tap("self_attn.o_proj"),
    mlp_out=Tap("mlp"),
    mlp_in="mlp.up_proj",
    mlp_gate="mlp.gate_proj",
    mlp_down="mlp.down_proj",
    resid_mid=Tap("post_attention_layernorm", "in"),
    final_norm="norm",
    notes=("hook_q / hook_k are read before rotary embedding",),
)

GEMMA2 = Adapter(
    family="Gemma 2",
    model_types=("gemma2",),
    blocks="layers",
    embed="embed_tokens",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.o_proj",
    attention="self_attn",
    attn_in_norm="input_layernorm",
    attn_out=Tap("post_attention_layernorm"),
    attn_post_norm="post_attention_layernorm",
    mlp_out=Tap("post_feedforward_layernorm"),
    mlp_post_norm="post_feedforward_layernorm",
    mlp_in="mlp.up_proj",
    mlp_gate="mlp.gate_proj",
    mlp_down="mlp.down_proj",
    resid_mid=Tap("pre_feedforward_layernorm", "in"),
    final_norm="norm",
    norm_gain_offset=1.0,
    softcap_attr="final_logit_softcapping",
    notes=(
        "hook_embed is the raw embedding; hook_resid_pre of block 0 is it times sqrt(d_model)",
        "hook_attn_out and hook_mlp_out are read after the post-norms, as the residual receives them",
        "logits are soft-capped: tanh(x / cap) * cap",
    ),
)

BERT = Adapter(
    family="BERT encoder",
    model_types=("bert",),
    blocks="encoder.layer",
    embed="embeddings.word_embeddings",
    pos_embed="embeddings.position_embeddings",
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    attention="attention.self",
    attn_out=Tap("attention.output.dense"),
    mlp_out=Tap("output.dense"),
    mlp_in="intermediate.dense",
    mlp_down="output.dense",
    resid_mid=Tap("attention.output.LayerNorm"),
    unembed="cls.predictions",
    notes=(
        "post-LN blocks: hook_attn_out / hook_mlp_out are read before the LayerNorm that "
        "follows each sublayer; hook_resid_mid and hook_resid_post after it",
        "no final norm; a masked-LM head (transform + decoder) gives logits when present",
    ),
)

TOY = Adapter(
    family="mechscope toy transformer",
    model_types=("mechscope_toy",),
    blocks="blocks",
    embed="embed",
    pos_embed="pos_embed",
    q="attn.q",
    k="attn.k",
    v="attn.v",
    o="attn.o",
    attention="attn",
    attn_in_norm="ln1",
    attn_out=Tap("attn.o"),
    mlp_out=Tap("mlp"),
    mlp_in="mlp.w_in",
    mlp_down="mlp.w_out",
    resid_mid=Tap("ln2", "in"),
    final_norm="ln_final",
    notes=("the zoo's own transformer (mechscope/zoo/transformer.py); attention-only variants have no MLP sites",),
)

FAMILIES: tuple[Adapter, ...] = (GPT2, NEOX, LLAMA, GEMMA2, BERT, TOY, *DECODERS, *MOE, *ENCODERS)


def adapter_for(model_type: str) -> Adapter | None:
    """The table serving a Hugging Face `model_type`, or None."""
    for adapter in FAMILIES:
        if model_type in adapter.model_types:
            return adapter
    return None


def supported_model_types() -> list[str]:
    return [t for a in FAMILIES for t in a.model_types]


def check_supported(config) -> None:
    """Refuse, with what is supported, a Hugging Face config that no table serves."""
    if adapter_for(config.model_type) is None:
        families = "; ".join(f"{a.family} ({', '.join(a.model_types)})" for a in FAMILIES)
        arch = (config.architectures or ["?"])[0]
        raise MechscopeError(
            f"architecture {arch} (model_type '{config.model_type}') is not supported: no adapter table serves it. "
            f"Tables: {families}. "
            "For a causal LM, `ms.auto_model(hf, tokenizer)` (what `ms.load` does for one) finds and verifies "
            "its sites automatically; to add a table, write one Adapter in mechscope/models/families_*.py"
        )
