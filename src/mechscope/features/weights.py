"""What a store computes from the dictionary's weights alone: logit effects (decoder rows
through the final norm's gain and the unembedding, as `dictionary.logit_effect` computes one)
and decoder-cosine neighbours, in chunks so that [d_sae, vocab] never exists at once."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..dictionary import SparseCoder
from ..dictionary.crosscoder import Crosscoder

CHUNK = 1024
"""Latents per chunk (1024 x vocab floats at once)."""


def residual_rows(coder: SparseCoder) -> Float[Tensor, "d_sae d"] | None:
    """Decoder rows that write the residual stream: the whole row, or a crosscoder's last block."""
    W = coder.W_dec.detach().float()
    if isinstance(coder, Crosscoder):
        return W[:, -coder.d_block :]
    return W


@torch.no_grad()
def logit_effects(model, coder: SparseCoder, k: int) -> dict[str, Tensor]:
    """Top-k promoted (`logit_up_*`) and suppressed (`logit_down_*`) token ids and values per
    latent; empty when the decoder does not write a residual-width vector or there is no LM head."""
    rows = residual_rows(coder)
    if k == 0 or rows is None or not model.has_lm_head or rows.shape[1] != model.dims.d_model:
        return {}
    module = model.module(model.adapter.final_norm) if model.adapter.final_norm else None
    centre = module is not None and (
        isinstance(module, torch.nn.LayerNorm) or getattr(module, "bias", None) is not None
    )
    weight = getattr(module, "weight", None) if module is not None else None
    W_U = model.W_U.detach().float().cpu()
    k = min(k, W_U.shape[1])
    up_i, up_v, down_i, down_v = [], [], [], []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK].cpu()
        if centre:
            chunk = chunk - chunk.mean(-1, keepdim=True)
        if weight is not None:
            chunk = chunk * (weight.detach().float().cpu() + model.adapter.norm_gain_offset)
        logits = chunk @ W_U
        top, bottom = logits.topk(k, dim=-1), (-logits).topk(k, dim=-1)
        up_i.append(top.indices)
        up_v.append(top.values)
        down_i.append(bottom.indices)
        down_v.append(-bottom.values)
    return {
        "logit_up_ids": torch.cat(up_i).to(torch.int32),
        "logit_up_val": torch.cat(up_v),
        "logit_down_ids": torch.cat(down_i).to(torch.int32),
        "logit_down_val": torch.cat(down_v),
    }


@torch.no_grad()
def neighbours(coder: SparseCoder, k: int) -> tuple[Int[Tensor, "d_sae k"], Float[Tensor, "d_sae k"]]:
    """The k latents whose decoder rows have the highest cosine with each latent's (itself excluded)."""
    W = coder.W_dec.detach().float()
    W = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    d = len(W)
    k = min(k, d - 1)
    ids, vals = [], []
    for start in range(0, d, CHUNK):
        cos = W[start : start + CHUNK] @ W.T
        own = torch.arange(start, min(start + CHUNK, d))
        cos[torch.arange(len(own)), own] = -2.0  # never one's own neighbour
        top = cos.topk(k, dim=-1)
        ids.append(top.indices)
        vals.append(top.values)
    return torch.cat(ids).to(torch.int32), torch.cat(vals)
