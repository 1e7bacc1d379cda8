"""Encoder families beyond BERT: one `Adapter` table each (see `adapter.py`).

Post-LN blocks: each sublayer's output is added to the residual stream and the sum is
LayerNormed, so hook_attn_out / hook_mlp_out are read before that LayerNorm and
hook_resid_mid / hook_resid_post after it (as for BERT).
"""

from __future__ import annotations

from .adapter import Adapter, Tap

POST_LN_NOTE = (
    "post-LN blocks: hook_attn_out / hook_mlp_out are read before the LayerNorm that follows each "
    "sublayer; hook_resid_mid and hook_resid_post after it"
)

ROBERTA = Adapter(
    family="RoBERTa encoder",
    model_types=("roberta",),
    blocks="encoder.layer",
    embed="embeddings.word_embeddings",
    pos_embed="embeddings.position_embeddings",
    pos_embed_per_prompt=True,
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
    unembed="lm_head",
    notes=(
        POST_LN_NOTE,
        "hook_pos_embed is [batch, pos, d_model]: RoBERTa numbers positions per prompt, from padding_idx + 1, "
        "skipping padding tokens",
        "no final norm; a masked-LM head (dense, GELU, LayerNorm, decoder) gives logits when present",
    ),
)

DISTILBERT = Adapter(
    family="DistilBERT encoder",
    model_types=("distilbert",),
    blocks="transformer.layer",
    embed="embeddings.word_embeddings",
    pos_embed="embeddings.position_embeddings",
    q="attention.q_lin",
    k="attention.k_lin",
    v="attention.v_lin",
    o="attention.out_lin",
    attention="attention",
    attn_out=Tap("attention.out_lin"),
    mlp_out=Tap("ffn"),
    mlp_in="ffn.lin1",
    mlp_down="ffn.lin2",
    resid_mid=Tap("sa_layer_norm"),
    unembed=("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),
    notes=(
        POST_LN_NOTE,
        "no token types; no final norm; the masked-LM head (vocab_transform, GELU, vocab_layer_norm, "
        "vocab_projector) gives logits when present",
    ),
)

ENCODERS: tuple[Adapter, ...] = (ROBERTA, DISTILBERT)
