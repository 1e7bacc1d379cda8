"""Tiny random-weight models of every supported family, built from configs (no hub)."""

from __future__ import annotations

import torch
import transformers as T

import mechscope as ms
from mechscope.zoo.transformer import ToyConfig, ToyTransformer

COMMON = dict(vocab_size=97, max_position_embeddings=64)


def _configs():
    return {
        "gpt2": (T.GPT2LMHeadModel, T.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64,
                                                 bos_token_id=0, eos_token_id=0)),
        "neox": (T.GPTNeoXForCausalLM, T.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                       intermediate_size=64, rotary_pct=0.5, **COMMON)),
        "neox_seq": (T.GPTNeoXForCausalLM, T.GPTNeoXConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                           intermediate_size=64, use_parallel_residual=False, **COMMON)),
        "llama": (T.LlamaForCausalLM, T.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                    num_key_value_heads=2, intermediate_size=64, **COMMON)),
        "mistral": (T.MistralForCausalLM, T.MistralConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                          num_key_value_heads=1, intermediate_size=64, **COMMON)),
        "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                    num_key_value_heads=2, intermediate_size=64, **COMMON)),
        "gemma2": (T.Gemma2ForCausalLM, T.Gemma2Config(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                       num_key_value_heads=2, head_dim=8, intermediate_size=64,
                                                       final_logit_softcapping=2.0, **COMMON)),
        "toy": (ToyTransformer, ToyConfig(vocab_size=97, n_ctx=64, d_model=32, n_layers=2, n_heads=4, d_head=8,
                                          d_mlp=64, norm="layernorm")),
        "toy_attn_only": (ToyTransformer, ToyConfig(vocab_size=97, n_ctx=64, d_model=32, n_layers=2, n_heads=4,
                                                    d_head=8, d_mlp=0, positions="none")),
        "bert": (T.BertForMaskedLM, T.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                                 intermediate_size=64, **COMMON)),
    }


FAMILY_NAMES = list(_configs())


def tiny_model(kind: str, seed: int = 0) -> ms.Model:
    cls, config = _configs()[kind]
    torch.manual_seed(seed)
    hf = cls(config)
    _randomise_norms(hf)
    return ms.Model(hf, None, name=f"tiny-{kind}")


def _randomise_norms(hf) -> None:
    """Fresh norms are the identity; give them random gains and biases so tests can
    tell whether a norm was applied."""
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name.lower() or name.split(".")[-2].startswith("ln"):
                param.add_(0.3 * torch.randn_like(param))
