"""Decoder families beyond the first five: one `Adapter` table each (see `adapter.py`).

Llama-shaped families share `LLAMA_PATHS` (module names only); what differs is data
in each table: norms, fused projections, scales, the variants a config switches on.
"""

from __future__ import annotations

from typing import Any

from .adapter import Adapter, Requirement, Tap, Variant

# keyword arguments for `Adapter`, spread into each table: values of several field types
LLAMA_PATHS: dict[str, Any] = dict(
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
)
QK_NORM_NOTE = (
    "hook_q / hook_k are the projections' outputs, read before the q/k norm (and before rotary): "
    "linear in the normed residual (= x @ W_Q + b_Q); attention uses rotary(q_norm(hook_q))"
)
ROTARY_NOTE = "hook_q / hook_k are read before rotary embedding"

QWEN3 = Adapter(
    family="Qwen3",
    model_types=("qwen3",),
    **LLAMA_PATHS,
    notes=(QK_NORM_NOTE + " (q_norm / k_norm act per head)", "grouped-query attention"),
)

SMOLLM3 = Adapter(
    family="SmolLM3",
    model_types=("smollm3",),
    **LLAMA_PATHS,
    notes=(ROTARY_NOTE, "layers listed in config.no_rope_layers as 0 use no rotary embedding (NoPE)"),
)

GRANITE = Adapter(
    family="Granite",
    model_types=("granite",),
    **LLAMA_PATHS,
    residual_scale_attr="residual_multiplier",
    logit_divisor_attr="logits_scaling",
    notes=(
        ROTARY_NOTE,
        "hook_embed is the raw embedding; hook_resid_pre of block 0 is it times config.embedding_multiplier",
        "hook_attn_out / hook_mlp_out are what the residual receives: the sublayer's output times "
        "config.residual_multiplier (head results carry the same factor); editing them divides it back out",
        "attention scores use config.attention_multiplier instead of 1/sqrt(d_head)",
        "logits are the LM head's output divided by config.logits_scaling (model.unembed does the same)",
    ),
)

GEMMA = Adapter(
    family="Gemma",
    model_types=("gemma",),
    **LLAMA_PATHS,
    norm_gain_offset=1.0,
    notes=(
        ROTARY_NOTE,
        "hook_embed is read after the embedding module, which multiplies by sqrt(d_model): "
        "hook_embed = W_E[ids] * sqrt(d_model)",
        "RMSNorms multiply by (1 + weight)",
    ),
)

GEMMA3 = Adapter(
    family="Gemma 3",
    model_types=("gemma3_text",),
    **{
        **LLAMA_PATHS,
        "resid_mid": Tap("pre_feedforward_layernorm", "in"),
        "attn_out": Tap("post_attention_layernorm"),
        "mlp_out": Tap("post_feedforward_layernorm"),
    },
    attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
    norm_gain_offset=1.0,
    softcap_attr="final_logit_softcapping",
    notes=(
        "hook_embed is read after the embedding module, which multiplies by sqrt(d_model): "
        "hook_embed = W_E[ids] * sqrt(d_model)",
        "hook_attn_out and hook_mlp_out are read after the post-norms, as the residual receives them "
        "(head results freeze the post-norm's scale at the actual output)",
        QK_NORM_NOTE + " (q_norm / k_norm act per head)",
        "sliding-window and global attention layers alternate (config.layer_types); each has its own rotary base",
        "RMSNorms multiply by (1 + weight); logits are soft-capped when config.final_logit_softcapping is set",
    ),
)

OLMO2 = Adapter(
    family="OLMo 2",
    model_types=("olmo2",),
    **{
        **LLAMA_PATHS,
        "attn_in_norm": None,
        "attn_out": Tap("post_attention_layernorm"),
        "mlp_out": Tap("post_feedforward_layernorm"),
        "resid_mid": Tap("mlp", "in"),
    },
    attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
    notes=(
        "no pre-norms: attention and MLP read the residual stream itself; each output is RMS-normed "
        "before it joins the residual (post-norms)",
        "hook_attn_out and hook_mlp_out are read after the post-norms, as the residual receives them "
        "(head results freeze the post-norm's scale at the actual output)",
        QK_NORM_NOTE + " (q_norm / k_norm act on all heads together, over head * d_head)",
    ),
)

PHI3 = Adapter(
    family="Phi-3",
    model_types=("phi3",),
    **{
        **LLAMA_PATHS,
        "q": "self_attn.qkv_proj",
        "k": "self_attn.qkv_proj",
        "v": "self_attn.qkv_proj",
        "mlp_in": "mlp.gate_up_proj",
        "mlp_gate": "mlp.gate_up_proj",
    },
    qkv_layout="concat",
    gate_up_fused=True,
    notes=(
        ROTARY_NOTE + " (partial rotary when config.partial_rotary_factor < 1)",
        "fused qkv_proj [q | k | v] and gate_up_proj [gate | up]: W_gate / W_in are its halves; "
        "mlp.hook_post is down_proj's input (silu(gate) * up)",
    ),
)

STABLELM = Adapter(
    family="StableLM",
    model_types=("stablelm",),
    **LLAMA_PATHS,
    parallel_attr="use_parallel_residual",
    notes=(
        ROTARY_NOTE + " (partial rotary: config.partial_rotary_factor), and before the per-head "
        "q/k LayerNorms when config.qk_layernorm is set",
        "LayerNorms with bias; with config.use_parallel_residual attention and MLP read the same input: "
        "no hook_resid_mid",
    ),
)

STARCODER2 = Adapter(
    family="StarCoder2",
    model_types=("starcoder2",),
    **{**LLAMA_PATHS, "mlp_in": "mlp.c_fc", "mlp_gate": None, "mlp_down": "mlp.c_proj"},
    notes=(ROTARY_NOTE, "LayerNorms and projections with bias, GELU MLP; sliding-window attention"),
)

COHERE = Adapter(
    family="Cohere (Command-R)",
    model_types=("cohere",),
    **{**LLAMA_PATHS, "resid_mid": None},
    parallel=True,
    logit_scale_attr="logit_scale",
    notes=(
        "parallel attention + MLP on one input_layernorm: no hook_resid_mid",
        "hook_q / hook_k are read before rotary (interleaved pairs) and before the q/k LayerNorms "
        "when config.use_qk_norm",
        "LayerNorms without bias; logits are the LM head's output times config.logit_scale",
    ),
)

PHI = Adapter(
    family="Phi (1, 1.5, 2)",
    model_types=("phi",),
    **{
        **LLAMA_PATHS,
        "o": "self_attn.dense",
        "attn_out": Tap("self_attn.dense"),
        "mlp_in": "mlp.fc1",
        "mlp_gate": None,
        "mlp_down": "mlp.fc2",
        "resid_mid": None,
        "final_norm": "final_layernorm",
    },
    parallel=True,
    notes=(
        "parallel attention + MLP on one input_layernorm: no hook_resid_mid",
        ROTARY_NOTE + " (partial rotary: config.partial_rotary_factor), and before the q/k LayerNorms when "
        "config.qk_layernorm",
        "LM head with bias (b_U)",
    ),
)

GPTJ = Adapter(
    family="GPT-J",
    model_types=("gptj",),
    blocks="h",
    embed="wte",
    q="attn.q_proj",
    k="attn.k_proj",
    v="attn.v_proj",
    o="attn.out_proj",
    attention="attn",
    attn_in_norm="ln_1",
    attn_out=Tap("attn.out_proj"),
    mlp_out=Tap("mlp"),
    mlp_in="mlp.fc_in",
    mlp_down="mlp.fc_out",
    resid_mid=None,
    final_norm="ln_f",
    parallel=True,
    notes=(
        "parallel attention + MLP on one ln_1: no hook_resid_mid",
        "hook_q / hook_k are read before rotary, which GPT-J applies to the first config.rotary_dim "
        "dimensions of each head in interleaved pairs",
        "LM head with bias (b_U)",
    ),
)

OPT = Adapter(
    family="OPT",
    model_types=("opt",),
    blocks="decoder.layers",
    embed="decoder.embed_tokens",
    pos_embed="decoder.embed_positions",
    pos_embed_per_prompt=True,
    mlp_flat_rows=True,
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.out_proj",
    attention="self_attn",
    attn_in_norm="self_attn_layer_norm",
    attn_out=Tap("self_attn.out_proj"),
    mlp_out=Tap("fc2"),
    mlp_in="fc1",
    mlp_down="fc2",
    resid_mid=Tap("final_layer_norm", "in"),
    final_norm="decoder.final_layer_norm",
    requires=(
        Requirement("do_layer_norm_before", "post-LN OPT (opt-350m) has no table yet", value=True),
        Requirement(
            "word_embed_proj_dim",
            "embeddings projected in and out of the residual stream (opt-350m) have no table yet",
            same_as="hidden_size",
        ),
        Requirement("_remove_final_layer_norm", "OPT without its final LayerNorm has no table yet", value=False),
    ),
    notes=(
        "hook_pos_embed is [batch, pos, d_model]: OPT numbers positions per prompt from its attention mask "
        "(position embeddings sit at row position + 2 of the table)",
        "learned positions, ReLU MLP (fc1, fc2 directly in the block), which runs on tokens flattened to "
        "[batch * pos, ...]: hook_resid_mid, mlp.hook_post and hook_mlp_out are unflattened to [batch, pos, ...]",
    ),
)

GPT_BIGCODE = Adapter(
    family="GPT-BigCode (StarCoder 1, SantaCoder)",
    model_types=("gpt_bigcode",),
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
    qkv_layout="neox_fused",
    variants=(Variant("multi_query", "concat", 1),),
    notes=(
        "multi-query attention (config.multi_query): one key/value head, fused c_attn [q | k | v]; "
        "without it c_attn is laid out [head, (q, k, v), d_head]",
        "nn.Linear projections (not GPT-2's Conv1D); learned positions",
    ),
)

FALCON = Adapter(
    family="Falcon",
    model_types=("falcon",),
    blocks="h",
    embed="word_embeddings",
    q="self_attention.query_key_value",
    k="self_attention.query_key_value",
    v="self_attention.query_key_value",
    o="self_attention.dense",
    attention="self_attention",
    attn_in_norm="input_layernorm",
    attn_out=Tap("self_attention.dense"),
    mlp_out=Tap("mlp", copy=True),
    mlp_in="mlp.dense_h_to_4h",
    mlp_down="mlp.dense_4h_to_h",
    resid_mid=Tap("post_attention_layernorm", "in"),
    final_norm="ln_f",
    qkv_layout="neox_fused",
    variants=(
        Variant(
            "new_decoder_architecture",
            "grouped",
            "num_kv_heads",
            equal=(("num_ln_in_parallel_attn", 2),),
            fields=(("attn_in_norm", "ln_attn"), ("parallel", True)),
        ),
        Variant("new_decoder_architecture", "grouped", "num_kv_heads", fields=(("parallel", True),)),
        Variant("multi_query", "concat", 1),
    ),
    parallel_attr="parallel_attn",
    notes=(
        "parallel attention + MLP when config.parallel_attn (the usual case): no hook_resid_mid",
        "multi-query attention (config.multi_query): one key/value head, fused [q | k | v]; "
        "otherwise [head, (q, k, v), d_head]",
        "new decoder architecture (Falcon-40B/180B, Falcon 2): q/k/v grouped per key/value head "
        "[kv_head, (queries, k, v), d_head]; attention reads ln_attn and the MLP ln_mlp when "
        "config.num_ln_in_parallel_attn == 2",
        "hook_q / hook_k are read before rotary embedding (ALiBi models: no rotary)",
        "hook_mlp_out is a copy of the MLP's output: the parallel block adds the attention output into it in place",
    ),
)

DECODERS: tuple[Adapter, ...] = (
    QWEN3,
    GEMMA,
    GEMMA3,
    PHI3,
    OLMO2,
    OPT,
    SMOLLM3,
    STARCODER2,
    GRANITE,
    STABLELM,
    COHERE,
    PHI,
    GPTJ,
    FALCON,
    GPT_BIGCODE,
)
