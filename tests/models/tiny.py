"""Tiny random-weight models of every supported family, built from configs (no hub)."""

from __future__ import annotations

import torch
import transformers as T

import mechscope as ms
from mechscope.zoo.transformer import ToyConfig, ToyTransformer

COMMON = dict(vocab_size=97, max_position_embeddings=64)
SMALL = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, **COMMON)
GQA = dict(SMALL, num_key_value_heads=2)
IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # defaults of some configs lie outside the tiny vocabulary
GPT = dict(n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=97, bos_token_id=0, eos_token_id=0)


def _configs():
    return {
        "gpt2": (
            T.GPT2LMHeadModel,
            T.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64, bos_token_id=0, eos_token_id=0),
        ),
        "neox": (
            T.GPTNeoXForCausalLM,
            T.GPTNeoXConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                intermediate_size=64,
                rotary_pct=0.5,
                **COMMON,
            ),
        ),
        "neox_seq": (
            T.GPTNeoXForCausalLM,
            T.GPTNeoXConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                intermediate_size=64,
                use_parallel_residual=False,
                **COMMON,
            ),
        ),
        "llama": (
            T.LlamaForCausalLM,
            T.LlamaConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                **COMMON,
            ),
        ),
        "mistral": (
            T.MistralForCausalLM,
            T.MistralConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                num_key_value_heads=1,
                intermediate_size=64,
                **COMMON,
            ),
        ),
        "qwen2": (
            T.Qwen2ForCausalLM,
            T.Qwen2Config(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                **COMMON,
            ),
        ),
        "gemma2": (
            T.Gemma2ForCausalLM,
            T.Gemma2Config(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                num_key_value_heads=2,
                head_dim=8,
                intermediate_size=64,
                final_logit_softcapping=2.0,
                **COMMON,
            ),
        ),
        "toy": (
            ToyTransformer,
            ToyConfig(vocab_size=97, n_ctx=64, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=64, norm="layernorm"),
        ),
        "toy_attn_only": (
            ToyTransformer,
            ToyConfig(vocab_size=97, n_ctx=64, d_model=32, n_layers=2, n_heads=4, d_head=8, d_mlp=0, positions="none"),
        ),
        "bert": (
            T.BertForMaskedLM,
            T.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, **COMMON),
        ),
        **_newer_decoders(),
        **_mixtures_of_experts(),
        "roberta": (T.RobertaForMaskedLM, T.RobertaConfig(**SMALL, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
        "distilbert": (
            T.DistilBertForMaskedLM,
            T.DistilBertConfig(n_layers=2, dim=32, n_heads=4, hidden_dim=64, pad_token_id=0, **COMMON),
        ),
    }


def _newer_decoders():
    """Configs that switch on each family's quirks (q/k norms, partial rotary, multipliers,
    sliding windows, multi-query attention, parallel blocks)."""
    return {
        "qwen3": (T.Qwen3ForCausalLM, T.Qwen3Config(**GQA, head_dim=8)),
        "gemma": (T.GemmaForCausalLM, T.GemmaConfig(**GQA, head_dim=8)),
        "gemma3": (
            T.Gemma3ForCausalLM,
            T.Gemma3TextConfig(
                **GQA,
                head_dim=8,
                sliding_window=4,
                layer_types=["sliding_attention", "full_attention"],
                final_logit_softcapping=3.0,
            ),
        ),
        "phi3": (T.Phi3ForCausalLM, T.Phi3Config(**GQA, **IDS, partial_rotary_factor=0.5)),
        "olmo2": (T.Olmo2ForCausalLM, T.Olmo2Config(**GQA, **IDS)),
        "opt": (
            T.OPTForCausalLM,
            T.OPTConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                ffn_dim=64,
                word_embed_proj_dim=32,
                **COMMON,
                **IDS,
            ),
        ),
        "smollm3": (T.SmolLM3ForCausalLM, T.SmolLM3Config(**GQA, **IDS, no_rope_layer_interval=2)),
        "starcoder2": (T.Starcoder2ForCausalLM, T.Starcoder2Config(**GQA, **IDS, sliding_window=4)),
        "granite": (
            T.GraniteForCausalLM,
            T.GraniteConfig(
                **GQA,
                **IDS,
                embedding_multiplier=3.0,
                residual_multiplier=0.5,
                attention_multiplier=0.2,
                logits_scaling=4.0,
            ),
        ),
        "stablelm": (
            T.StableLmForCausalLM,
            T.StableLmConfig(**GQA, **IDS, partial_rotary_factor=0.5, qk_layernorm=True),
        ),
        "stablelm_parallel": (T.StableLmForCausalLM, T.StableLmConfig(**GQA, **IDS, use_parallel_residual=True)),
        "cohere": (T.CohereForCausalLM, T.CohereConfig(**GQA, **IDS, logit_scale=0.5, use_qk_norm=True)),
        "phi": (T.PhiForCausalLM, T.PhiConfig(**SMALL, **IDS, partial_rotary_factor=0.5, qk_layernorm=True)),
        "gptj": (T.GPTJForCausalLM, T.GPTJConfig(**GPT, rotary_dim=4, n_inner=64)),
        "falcon": (
            T.FalconForCausalLM,
            T.FalconConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                vocab_size=97,
                bos_token_id=0,
                eos_token_id=0,
            ),
        ),
        "falcon_seq": (
            T.FalconForCausalLM,
            T.FalconConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                vocab_size=97,
                bos_token_id=0,
                eos_token_id=0,
                multi_query=False,
                parallel_attn=False,
            ),
        ),
        "falcon_alibi": (
            T.FalconForCausalLM,
            T.FalconConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                vocab_size=97,
                bos_token_id=0,
                eos_token_id=0,
                alibi=True,
                multi_query=False,
                parallel_attn=False,
                bias=True,
            ),
        ),
        "falcon_new": (
            T.FalconForCausalLM,
            T.FalconConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                vocab_size=97,
                bos_token_id=0,
                eos_token_id=0,
                new_decoder_architecture=True,
                num_kv_heads=2,
            ),
        ),
        "falcon_new_one_ln": (
            T.FalconForCausalLM,
            T.FalconConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=4,
                vocab_size=97,
                bos_token_id=0,
                eos_token_id=0,
                new_decoder_architecture=True,
                num_kv_heads=2,
                num_ln_in_parallel_attn=1,
            ),
        ),
        "gpt_bigcode": (T.GPTBigCodeForCausalLM, T.GPTBigCodeConfig(**GPT, n_inner=64, multi_query=True)),
        "gpt_bigcode_mha": (T.GPTBigCodeForCausalLM, T.GPTBigCodeConfig(**GPT, n_inner=64, multi_query=False)),
    }


def _mixtures_of_experts():
    return {
        "mixtral": (T.MixtralForCausalLM, T.MixtralConfig(**GQA, **IDS, num_local_experts=4, num_experts_per_tok=2)),
        "qwen3_moe": (
            T.Qwen3MoeForCausalLM,
            T.Qwen3MoeConfig(
                **GQA,
                **IDS,
                head_dim=8,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=16,
                norm_topk_prob=True,
            ),
        ),
    }


FAMILY_NAMES = list(_configs())
MOE_NAMES = list(_mixtures_of_experts())
ENCODER_NAMES = ["bert", "roberta", "distilbert"]


def tiny_model(kind: str, seed: int = 0, dtype: torch.dtype | None = None) -> ms.Model:
    cls, config = _configs()[kind]
    torch.manual_seed(seed)
    hf = cls(config)
    _randomise_norms(hf)
    if dtype is not None:
        hf.to(dtype)
    if dtype == torch.float64 and kind in MOE_NAMES:  # HF's default grouped_mm experts take no float64
        hf.set_experts_implementation("eager")
    return ms.Model(hf, None, name=f"tiny-{kind}")


def _randomise_norms(hf) -> None:
    """Fresh norms are the identity; give them random gains and biases so tests can
    tell whether a norm was applied."""
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name.lower() or name.split(".")[-2].startswith("ln"):
                param.add_(0.3 * torch.randn_like(param))
