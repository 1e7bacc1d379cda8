"""What the lens methods share: which residual streams a lens reads, token arguments
that must be single tokens, the unembedding pushed through in bounded chunks, and the
folder format (cfg.json + tensors.safetensors) of their results."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file
from torch import Tensor

from ..errors import MechscopeError
from ..io import write_json, write_tensors

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


def streams(model, *, include_mid: bool, layers: Sequence[int] | int | None = None,
            with_translator: bool = False) -> list[Stream]:
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


def require_lm_head(model, method: str) -> None:
    if not model.has_lm_head:
        raise MechscopeError(f"{model.name} has no LM head (an encoder without an unembedding): {method} needs "
                             "one; load the model with its LM head (e.g. a ...ForCausalLM / ...ForMaskedLM class)")


def decode(model, token_id: int) -> str:
    return model.tokenizer.decode([token_id]) if model.tokenizer is not None else str(token_id)


def decode_many(model, token_ids: Sequence[int]) -> dict[int, str]:
    """{id: text} of single tokens, decoded in one tokenizer call (as `decode` does one)."""
    ids = sorted({int(t) for t in token_ids})
    tokenizer = model.tokenizer
    if tokenizer is None:
        return {t: str(t) for t in ids}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if ids and backend is not None and getattr(tokenizer, "clean_up_tokenization_spaces", True) is False:
        # a fast tokenizer's `decode` is its backend's, with no clean-up: one Rust call for
        # all ids (thousands of single `decode` calls cost as much as a forward pass)
        texts = backend.decode_batch([[t] for t in ids], skip_special_tokens=False)
        if texts[:4] == [tokenizer.decode([t]) for t in ids[:4]]:
            return dict(zip(ids, texts))
    return dict(zip(ids, tokenizer.batch_decode([[t] for t in ids])))


def token_ids(model, tokens: Sequence[str | int] | str | int, what: str = "target") -> list[int]:
    """Token ids for strings that must each be one token (or ids, checked against the vocabulary)."""
    items = [tokens] if isinstance(tokens, (str, int)) else list(tokens)
    out = []
    for token in items:
        if isinstance(token, Tensor) and token.numel() == 1:
            token = int(token)
        if isinstance(token, int) and not isinstance(token, bool):
            if not 0 <= token < model.dims.d_vocab:
                raise MechscopeError(f"{what} id {token} is outside the vocabulary (0-{model.dims.d_vocab - 1})")
            out.append(token)
            continue
        if not isinstance(token, str):
            raise MechscopeError(f"{what} must be a string (one token) or a token id, got {token!r}")
        if model.tokenizer is None:
            raise MechscopeError(f"{model.name} has no tokenizer: give {what}s as token ids, not {token!r}")
        ids = model.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            pieces = [model.tokenizer.decode([i]) for i in ids]
            raise MechscopeError(f"{what} {token!r} is {len(ids)} tokens {pieces}: give single tokens")
        out.append(ids[0])
    return out


def position_list(positions: int | Sequence[int] | None) -> list[int] | None:
    if positions is None:
        return None
    wanted = [positions] if isinstance(positions, int) else list(positions)
    if not wanted or any(isinstance(p, bool) or not isinstance(p, int) for p in wanted):
        raise MechscopeError(f"positions must be an integer or a non-empty list of integers, got {positions!r}")
    return wanted


def absolute_positions(run, positions: list[int] | None) -> tuple[Tensor, Tensor]:
    """Absolute position [batch, pos] of each lens column and whether it is a real token."""
    lengths = run.lengths.cpu()
    if positions is None:
        seq = run.tokens.shape[1]
        absolute = torch.arange(seq).expand(len(lengths), seq)
        return absolute.clone(), absolute < lengths[:, None]
    absolute = torch.stack([lengths + p if p < 0 else torch.full_like(lengths, p) for p in positions], dim=1)
    return absolute, torch.ones_like(absolute, dtype=torch.bool)


def record(model, prompts, sites: list[str], positions: list[int] | None, batch_size: int | None):
    """One run recording `sites` (only at `positions`), without computing the logits."""
    return model.run(prompts, record=sorted(set(sites), key=model.table.order.__getitem__), positions=positions,
                     logits=False, batch_size=batch_size)


def translated(model, run, stream: Stream, translator: Translator | None) -> Float[Tensor, "batch pos d_model"]:
    resid = run.cache[stream.site]
    if translator is None:
        return resid
    out = translator(resid, stream.index)
    if not isinstance(out, Tensor) or out.shape != resid.shape:
        raise MechscopeError(f"the translator returned {getattr(out, 'shape', type(out).__name__)} for a residual "
                             f"of shape {tuple(resid.shape)}: it must return a tensor of the same shape")
    return out


def chunked_logprobs(model, resid: Float[Tensor, "row d_model"], vocab_ids: Int[Tensor, "vocab"] | None
                     ) -> Iterator[tuple[int, Float[Tensor, "chunk vocab"]]]:
    """(first row, log-probabilities) of final norm + unembedding, a bounded chunk at a time;
    renormalised over `vocab_ids` when given."""
    size = max(1, CHUNK_ELEMENTS // model.dims.d_vocab)
    with torch.no_grad():
        for start in range(0, len(resid), size):
            logits = model.to_logits(resid[start:start + size].to(model.device)).float()
            if vocab_ids is not None:
                logits = logits[:, vocab_ids.to(logits.device)]
            yield start, logits.log_softmax(-1)


def pandas():
    try:
        import pandas
    except ImportError:
        raise MechscopeError("to_frame() needs pandas, which is not installed: `pip install pandas`") from None
    return pandas


def figure(width: float, height: float):
    """A matplotlib figure that touches no global pyplot state."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


class Saveable:
    """Results saved as a folder: cfg.json (the plain fields) + tensors.safetensors."""

    KIND: ClassVar[str] = ""

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        tensors = {k: v for k, v in values.items() if isinstance(v, Tensor)}
        cfg = {"kind": self.KIND, **{k: v for k, v in values.items() if not isinstance(v, Tensor)}}
        write_tensors(path / "tensors.safetensors", tensors)
        write_json(path / "cfg.json", cfg)  # written last: its presence marks a complete folder
        return path

    @classmethod
    def load(cls, path: str | Path) -> Any:
        path = Path(path)
        if not (path / "cfg.json").is_file() or not (path / "tensors.safetensors").is_file():
            raise MechscopeError(f"no saved {cls.KIND} at '{path}': expected a folder with cfg.json and tensors.safetensors")
        cfg = json.loads((path / "cfg.json").read_text())
        if cfg.pop("kind", None) != cls.KIND:
            raise MechscopeError(f"'{path}' holds a saved {cfg.get('kind', 'something else')!r}, not a {cls.KIND}")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {**{k: v for k, v in cfg.items() if k in names}, **load_file(path / "tensors.safetensors")}
        missing = names - set(values)
        for name in missing:  # optional tensors that were None when saved
            values[name] = None
        return cls(**values)
