"""The zoo's own small transformer, written for the toy tasks (grokking, induction,
variable binding): options for layers, heads, d_model, d_mlp (0 = attention-only),
LayerNorm or none, learned or no positional embedding.

It is a Hugging Face `PreTrainedModel` of its own (model_type `mechscope_toy`), so it
saves and loads with `save_pretrained` / `from_pretrained` and mechscope reads it
through an ordinary adapter table (`TOY` in models/families.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class ToyConfig(PretrainedConfig):
    model_type = "mechscope_toy"
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "head_dim": "d_head",
        "max_position_embeddings": "n_ctx",
    }

    def __init__(
        self,
        vocab_size: int = 114,
        n_ctx: int = 3,
        d_model: int = 128,
        n_layers: int = 1,
        n_heads: int = 4,
        d_head: int = 32,
        d_mlp: int = 512,
        act: str = "relu",
        norm: str = "none",
        positions: str = "learned",
        init_std: float = 0.02,
        **kwargs,
    ):
        self.vocab_size, self.n_ctx, self.d_model, self.n_layers = vocab_size, n_ctx, d_model, n_layers
        self.n_heads, self.d_head, self.d_mlp, self.act = n_heads, d_head, d_mlp, act
        self.norm, self.positions, self.init_std = norm, positions, init_std
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


def _norm(config: ToyConfig) -> nn.Module:
    return nn.LayerNorm(config.d_model) if config.norm == "layernorm" else nn.Identity()


class Attention(nn.Module):
    """Causal multi-head attention; returns (output, pattern) like Hugging Face's modules."""

    def __init__(self, c: ToyConfig):
        super().__init__()
        self.n_heads, self.d_head = c.n_heads, c.d_head
        self.q = nn.Linear(c.d_model, c.n_heads * c.d_head)
        self.k = nn.Linear(c.d_model, c.n_heads * c.d_head)
        self.v = nn.Linear(c.d_model, c.n_heads * c.d_head)
        self.o = nn.Linear(c.n_heads * c.d_head, c.d_model)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        b, p, _ = x.shape
        q, k, v = (proj(x).view(b, p, self.n_heads, self.d_head).transpose(1, 2) for proj in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)  # [b, head, q, k]
        allowed = torch.ones(p, p, dtype=torch.bool, device=x.device).tril()
        if key_mask is not None:
            allowed = allowed & key_mask[:, None, None, :].bool()
        pattern = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        z = (pattern @ v).transpose(1, 2).reshape(b, p, -1)  # [b, pos, head*d_head]
        return self.o(z), pattern


class MLP(nn.Module):
    def __init__(self, c: ToyConfig):
        super().__init__()
        self.w_in = nn.Linear(c.d_model, c.d_mlp)
        self.act = {"relu": nn.ReLU(), "gelu": nn.GELU()}[c.act]
        self.w_out = nn.Linear(c.d_mlp, c.d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(self.act(self.w_in(x)))


class Block(nn.Module):
    def __init__(self, c: ToyConfig):
        super().__init__()
        self.ln1, self.attn = _norm(c), Attention(c)
        self.ln2 = _norm(c) if c.d_mlp else None
        self.mlp = MLP(c) if c.d_mlp else None

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        x = x + self.attn(self.ln1(x), key_mask)[0]
        return x + self.mlp(self.ln2(x)) if self.mlp is not None and self.ln2 is not None else x  # both or neither


class ToyTransformer(PreTrainedModel):
    config_class = ToyConfig
    base_model_prefix = ""
    _no_split_modules = ["Block"]

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_embed = nn.Embedding(config.n_ctx, config.d_model) if config.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_final = _norm(config)
        self.unembed = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def get_output_embeddings(self) -> nn.Module:
        return self.unembed

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        **_,
    ) -> CausalLMOutput:
        x = self.embed(input_ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(input_ids.shape[1], device=input_ids.device)[None])
        hidden, patterns = [x], []
        for block in self.blocks:
            assert isinstance(block, Block)
            if output_attentions:  # read the pattern from the module itself, as mechscope does
                handle = block.attn.register_forward_hook(lambda m, a, out: patterns.append(out[1]))
            x = block(x, attention_mask)
            if output_attentions:
                handle.remove()
            hidden.append(x)
        normed = self.ln_final(x)
        hidden[-1] = normed  # Hugging Face's convention: the last hidden state is final-normed
        logits = self.unembed(normed)
        loss = None if labels is None else F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return CausalLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(patterns) if output_attentions else None,
        )


AutoConfig.register(ToyConfig.model_type, ToyConfig, exist_ok=True)
AutoModelForCausalLM.register(ToyConfig, ToyTransformer, exist_ok=True)
