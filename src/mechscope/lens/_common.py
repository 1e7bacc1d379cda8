"""What the lens methods share: which residual streams a lens reads, the translators that
map them, and the unembedding pushed through in bounded chunks. Helpers other methods
share too live in the core: `mechscope.tokens`, `mechscope.results`, `mechscope.plots`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import MechscopeError

log = logging.getLogger(__name__)

Translator = Callable[[Tensor, int], Tensor]
"""`translator(resid [..., d_model], index) -> resid [..., d_model]`: maps a residual stream
into the space the model's final norm + unembedding read. `index` counts the blocks the
stream has passed through, as Hugging Face's `hidden_states` does: 0 is
`blocks.0.hook_resid_pre` (the embeddings), l + 1 is `blocks.{l}.hook_resid_post`, and
n_layers is the last block's output. A tuned lens (`mechscope.lens.tuned.TunedLens`) is one."""

CHUNK_ELEMENTS = 1 << 22  # logits held at once while unembedding: 16 MiB of float32


@dataclass(frozen=True)
class Stream:
    """One residual stream a lens reads: a plot label, its site, its translator index."""

    label: str
    site: str
    index: int | None
    """Blocks passed through (see `Translator`); None for resid_mid, which sits inside a block."""


def check_layers(model, layers: Sequence[int] | int | None) -> list[int] | None:
    """Layer indices (negative counts from the end) checked against the model; None = all."""
    if layers is None:
        return None
    n = model.dims.n_layers
    wanted = [layers] if isinstance(layers, int) else list(layers)
    out = []
    for layer in wanted:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise MechscopeError(f"layers must be integers, got {layer!r}")
        if not -n <= layer < n:
            raise MechscopeError(f"layer {layer} is out of range: this model has {n} layers (0-{n - 1})")
        out.append(layer % n)
    if not out:
        raise MechscopeError("layers is empty: give at least one layer index, or None for all")
    return sorted(set(out))


def streams(
    model, *, include_mid: bool, layers: Sequence[int] | int | None = None, with_translator: bool = False
) -> list[Stream]:
    """The residual streams in forward order: the embedding stream (when all layers are
    wanted), then per block its resid_mid (sequential blocks, `include_mid`) and resid_post.
    A translator has no map for resid_mid, so mids are left out when one is used."""
    chosen = check_layers(model, layers)
    names = model.table.by_name
    out = [Stream("embed", "blocks.0.hook_resid_pre", 0)] if chosen is None else []
    if include_mid and with_translator:
        log.info("a translator maps only block boundaries: hook_resid_mid is left out")
    for layer in range(model.dims.n_layers) if chosen is None else chosen:
        mid = f"blocks.{layer}.hook_resid_mid"
        if include_mid and not with_translator and mid in names:
            out.append(Stream(f"L{layer} mid", mid, None))
        out.append(Stream(f"L{layer}", f"blocks.{layer}.hook_resid_post", layer + 1))
    return out


def record(model, prompts, sites: list[str], positions: list[int] | None, batch_size: int | None):
    """One run recording `sites` (only at `positions`), without computing the logits."""
    return model.run(
        prompts,
        record=sorted(set(sites), key=model.table.order.__getitem__),
        positions=positions,
        logits=False,
        batch_size=batch_size,
    )


def translated(model, run, stream: Stream, translator: Translator | None) -> Float[Tensor, "batch pos d_model"]:
    resid = run.cache[stream.site]
    if translator is None:
        return resid
    assert stream.index is not None  # mids (index None) are left out when a translator is used
    out = translator(resid, stream.index)
    if not isinstance(out, Tensor) or out.shape != resid.shape:
        raise MechscopeError(
            f"the translator returned {getattr(out, 'shape', type(out).__name__)} for a residual "
            f"of shape {tuple(resid.shape)}: it must return a tensor of the same shape"
        )
    return out


def chunked_logprobs(
    model, resid: Float[Tensor, "row d_model"], vocab_ids: Int[Tensor, " vocab"] | None
) -> Iterator[tuple[int, Float[Tensor, "chunk vocab"]]]:
    """(first row, log-probabilities) of final norm + unembedding, a bounded chunk at a time;
    renormalised over `vocab_ids` when given."""
    size = max(1, CHUNK_ELEMENTS // model.dims.d_vocab)
    with torch.no_grad():
        for start in range(0, len(resid), size):
            logits = model.to_logits(resid[start : start + size].to(model.device)).float()
            if vocab_ids is not None:
                logits = logits[:, vocab_ids.to(logits.device)]
            yield start, logits.log_softmax(-1)
