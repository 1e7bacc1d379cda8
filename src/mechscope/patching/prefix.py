"""Prefix sharing: the positions before the first token where the clean and corrupted
prompts differ are the same in every patched copy (a causal model computes position p from
positions <= p only, and no patch changes them), so they run once, into a KV cache, and
each patched forward computes only the suffix, attending to that cache.

    clean, corrupt = record(model, task, sites, read, plans=[capture := CaptureCache()])
    P = shared_prefix(task.clean, task.corrupt, mask, source.cache, base_run.cache, sites, read)  # or 0
    state = from_cache(model, capture.cache, base_rows, P, logits)   # (or run_prefix: one forward of P tokens)
    ... model.run(base[:, P:], attention_mask=mask[:, P:], plans=[PastPrefix(state, copies, tile), ...])

Only where it is exact: Hugging Face models whose cache is full attention in every layer
(`DynamicCache` of `DynamicLayer`s; sliding windows, recurrent states and mechscope's own
toy transformers run whole), no edits held by `model.edit` (their positions are absolute),
sources equal to the base run's activations on the prefix at every patched site, and a
metric that reads past the prefix.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor, nn

from ..hooks import Plan
from ..sites import SiteTable

ATOL = 1e-6
"""How close the source and base activations must be on the prefix for it to be shared (the
clean and corrupted rows of one forward agree there up to float rounding)."""


@dataclass
class PrefixState:
    """The prefix's keys and values per layer ([rows, kv_heads, P, d_head]) and, when the
    metric reads every position, its logits [rows, P, vocab]."""

    length: int
    kv: list[tuple[Tensor, Tensor]]
    logits: Tensor | None


def shared_prefix(
    clean: Tensor,
    corrupt: Tensor,
    mask: Tensor,
    source: dict[str, Tensor],
    base: dict[str, Tensor],
    sites: Sequence[str],
    read: Tensor | None,
) -> int:
    """P: the positions [0, P) shared by every row of the clean and corrupted tokens, inside
    every row's length, before every position the metric reads, where the source equals the
    base run at every site; 0 when nothing can be shared (at least one token is left to run)."""
    differs = (clean != corrupt).any(0).nonzero()
    length = int(differs[0]) if len(differs) else clean.shape[1]
    length = min(length, int(mask.sum(-1).min()), clean.shape[1] - 1)
    if read is not None:
        length = min(length, int(read.min()))
    if length < 1:
        return 0
    for site in sites:
        a, b = source[site][:, :length], base[site][:, :length]
        if a.shape != b.shape or not torch.allclose(a.float(), b.float(), rtol=0, atol=ATOL):
            return 0
    return length


class CaptureCache(Plan):
    """Turns the model's KV cache on for this pass and keeps what it returns (`cache`)."""

    name = "prefix cache"

    def __init__(self) -> None:
        self.cache = None

    def install(self, model: nn.Module, table: SiteTable, handles: list) -> None:
        handles.append(model.register_forward_pre_hook(self._on, with_kwargs=True))
        handles.append(model.register_forward_hook(self._keep))

    def _on(self, module, args, kwargs):
        return args, {**kwargs, "use_cache": True}

    def _keep(self, module, args, output) -> None:
        self.cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)


def _full_attention_kv(cache) -> list[tuple[Tensor, Tensor]] | None:
    """Each layer's (keys, values) when every layer is a plain full-attention cache layer."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:  # a transformers without these classes: run whole
        return None
    if type(cache) is not DynamicCache or not cache.layers:
        return None
    if any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    kv = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in cache.layers]
    pairs = [(k, v) for k, v in kv if isinstance(k, Tensor) and isinstance(v, Tensor)]
    return pairs if len(pairs) == len(kv) else None  # a layer not filled (KV sharing): run whole


def shareable(model) -> bool:
    """A Hugging Face model (its forward takes use_cache) with no edits held by `model.edit`."""
    from ..model import Model

    return isinstance(model, Model) and not model._held_edits


def from_cache(model, cache, rows: slice, length: int, logits: Tensor | None) -> PrefixState | None:
    """The prefix of rows `rows` of a whole run whose KV cache `CaptureCache` kept (a causal
    model's keys and values at positions < P do not depend on later tokens): no extra forward.
    `logits`: the run's logits of those rows, when the metric reads every position."""
    kv = _full_attention_kv(cache) if shareable(model) else None
    if kv is None or len(kv) != model.dims.n_layers:
        return None
    cut = [(k[rows, ..., :length, :].contiguous(), v[rows, ..., :length, :].contiguous()) for k, v in kv]
    return PrefixState(length, cut, None if logits is None else logits[:, :length])


def run_prefix(model, base: Tensor, mask: Tensor, length: int, full_logits: bool) -> PrefixState | None:
    """One forward of the base rows' first `length` tokens, keeping the KV cache; None when
    this model's cache cannot be shared exactly (see the module's docstring)."""
    if not shareable(model):
        return None
    capture = CaptureCache()
    with torch.no_grad():
        run = model.run(base[:, :length], attention_mask=mask[:, :length], plans=[capture])
    kv = _full_attention_kv(capture.cache)
    if kv is None or len(kv) != model.dims.n_layers or kv[0][0].shape[-2] != length:
        return None
    return PrefixState(length, kv, run.logits if full_logits else None)


def multiples(copies: dict[int, int] | None, tile: int, n_layers: int) -> list[int]:
    """Copies of the prompt rows in each layer's batch: `tile` throughout, or as `CopyRows`
    grows it (prompt rows plus the copies joined so far; after the last join, copies only)."""
    if not copies:
        return [tile] * n_layers
    last, out, joined = max(copies), [], 0
    for layer in range(n_layers):
        joined += copies.get(layer, 0)
        out.append(joined if layer >= last else 1 + joined)
    return out


class PastPrefix(Plan):
    """The suffix pass: hands the model the prefix's KV cache, repeated to the rows each
    layer sees (`multiples`), and an attention mask over prefix and suffix."""

    name = "shared prefix"
    one_batch = True

    def __init__(self, state: PrefixState, per_layer: list[int]):
        self.state, self.per_layer = state, per_layer

    def install(self, model: nn.Module, table: SiteTable, handles: list) -> None:
        # transformers 5 names the argument `cache` (`past_key_values` is deprecated there)
        self.key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        handles.append(model.register_forward_pre_hook(self._hook, with_kwargs=True))

    def _hook(self, module, args, kwargs):
        from transformers.cache_utils import DynamicCache

        layers = [
            (k.repeat(m, *[1] * (k.dim() - 1)), v.repeat(m, *[1] * (v.dim() - 1)))
            for (k, v), m in zip(self.state.kv, self.per_layer)
        ]
        ids = kwargs["input_ids"]
        suffix = kwargs.get("attention_mask")
        suffix = torch.ones_like(ids) if suffix is None else suffix
        ones = torch.ones(ids.shape[0], self.state.length, dtype=suffix.dtype, device=suffix.device)
        extra = {
            self.key: DynamicCache(ddp_cache_data=layers),
            "use_cache": True,
            "attention_mask": torch.cat([ones, suffix], 1),
        }
        return args, {**kwargs, **extra}


def after(n: int, groups: Sequence[Sequence], source: dict[str, Tensor], base: Tensor, mask: Tensor, read):
    """The patch groups, sources, tokens, mask and read positions of the positions from `n`
    on; a patch inside the prefix writes the base's own values there and is left out."""
    shifted = [
        tuple(
            replace(p, position=None if p.position is None else p.position - n)
            for p in group
            if p.position is None or p.position >= n
        )
        for group in groups
    ]
    cut = {k: v[:, n:] for k, v in source.items()}
    return shifted, cut, base[:, n:], mask[:, n:], None if read is None else read - n
