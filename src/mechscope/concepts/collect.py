"""`collect(model, texts, labels, sites)`: the model's activations at `sites` with one label
per row, in memory or in the dictionaries' on-disk activation cache.

    data = collect(model, texts, python_token_kinds, "blocks.*.hook_resid_post")  # per token
    data = collect(model, texts, ["pos", "neg", ...], "blocks.2.hook_resid_post")  # per text, last token

Labels are either one per text (placed at `positions`, by default the last token), one list
per text with one entry per model token, or a labeller `fn(text, tokens)` (see `labels`).
Long texts are cut into windows of the model's context; per-token labels follow their token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import MechscopeError
from ..io import read_json, read_tensors, write_json, write_tensors
from .labelled import CachedRows, Labelled, check_finite, class_names
from .labels import Label, Labeller, TextTokens

log = logging.getLogger(__name__)
DEFAULT_CONTEXT = 512
"""Window length for models whose config names no context limit."""


def encode(model, text: str) -> TextTokens:
    """`text` through the model's tokenizer, with each token's character span."""
    if model.tokenizer is None:
        raise MechscopeError(f"{model.name} has no tokenizer: collect needs text it can tokenize")
    try:
        enc = model.tokenizer(text, return_offsets_mapping=True)
    except NotImplementedError:
        raise MechscopeError(
            f"{model.name}'s tokenizer gives no character offsets (a slow tokenizer): load it with a fast one"
        ) from None
    ids = list(enc["input_ids"])
    pieces = [model.tokenizer.decode([i]) for i in ids]
    return TextTokens(ids, pieces, [tuple(o) for o in enc["offset_mapping"]])


def token_labels(
    model, texts: Sequence[str], labels: Labeller | Sequence, positions: int | Sequence[int] | None
) -> tuple[list[TextTokens], list[list[Label | None]]]:
    """Tokens of every text and one label (or None) per token."""
    if isinstance(texts, str) or not texts or any(not isinstance(t, str) for t in texts):
        raise MechscopeError("texts must be a non-empty list of strings")
    encoded = [encode(model, t) for t in texts]
    empty = [i for i, e in enumerate(encoded) if not e.ids]
    if empty:
        raise MechscopeError(f"text {empty[0]} has no tokens: give some text")
    if callable(labels):
        per_token = [list(labels(t, e)) for t, e in zip(texts, encoded)]
    else:
        if isinstance(labels, (str, Tensor)) or len(labels) != len(texts):
            count = len(labels) if not isinstance(labels, str) else 1
            raise MechscopeError(
                f"{count} labels for {len(texts)} texts: give one label per text, one list per text "
                "(a label per token), or a labeller function"
            )
        if all(isinstance(v, (list, tuple)) for v in labels):
            per_token = [list(v) for v in labels]
        else:
            chosen = [-1] if positions is None else [positions] if isinstance(positions, int) else list(positions)
            per_token = [_at_positions(len(e.ids), v, chosen, i) for i, (e, v) in enumerate(zip(encoded, labels))]
            positions = None
    for i, (e, v) in enumerate(zip(encoded, per_token)):
        if len(v) != len(e.ids):
            raise MechscopeError(
                f"text {i} has {len(e.ids)} tokens but {len(v)} labels: give one label per token (None to skip one)"
            )
    if positions is not None:
        chosen = [positions] if isinstance(positions, int) else list(positions)
        per_token = [_at_positions(len(v), None, chosen, i, keep=v) for i, v in enumerate(per_token)]
    return encoded, per_token


def _at_positions(n: int, value, chosen: list[int], text: int, keep: list | None = None) -> list:
    out: list = [None] * n
    for p in chosen:
        if not -n <= p < n:
            raise MechscopeError(f"position {p} is outside text {text}, which has {n} tokens")
        out[p] = value if keep is None else keep[p]
    return out


def windows(
    encoded: list[TextTokens], per_token: list[list], context: int
) -> tuple[list[list[int]], list[list], list[int]]:
    """Cut each text into windows of at most `context` tokens: ids, labels and text index."""
    ids, labs, owner = [], [], []
    for i, (e, v) in enumerate(zip(encoded, per_token)):
        for start in range(0, len(e.ids), context):
            piece = v[start : start + context]
            if any(x is not None for x in piece):
                ids.append(e.ids[start : start + context])
                labs.append(piece)
                owner.append(i)
    if not ids:
        raise MechscopeError("no token got a label: check the labels (every one is None)")
    return ids, labs, owner


def _padded(ids: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    width = max(len(x) for x in ids)
    out = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for row, x in enumerate(ids):
        out[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    return out, mask


@dataclass(frozen=True)
class Prepared:
    """Labelled texts as model inputs: right-padded windows and a label per position."""

    tokens: Tensor
    """[windows, pos] token ids (padding: the tokenizer's pad id)."""
    mask: Tensor
    """[windows, pos] 1 for real tokens."""
    labels: Tensor
    """[windows, pos] class index, -1 where there is no label (or padding)."""
    texts: Tensor
    """[windows, pos] the text each position came from."""
    classes: tuple[str, ...]


def prepare(
    model, texts: Sequence[str], labels: Labeller | Sequence, positions: int | Sequence[int] | None = None
) -> Prepared:
    """Tokenize and label `texts` (see `collect`), cut into windows of the model's context."""
    encoded, per_token = token_labels(model, texts, labels, positions)
    classes = class_names([x for v in per_token for x in v if x is not None])
    lookup = {c: i for i, c in enumerate(classes)}
    ids, labs, owner = windows(encoded, per_token, model.context_length or DEFAULT_CONTEXT)
    tokens, mask = _padded(ids, model.tokenizer.pad_token_id or 0)
    y = torch.full(tokens.shape, -1, dtype=torch.long)
    for row, v in enumerate(labs):
        y[row, : len(v)] = torch.tensor([-1 if x is None else lookup[str(x)] for x in v])
    return Prepared(tokens, mask, y, torch.tensor(owner)[:, None].expand_as(tokens).clone(), classes)


def collect(
    model,
    texts: Sequence[str],
    labels: Labeller | Sequence,
    sites: str | Sequence[str],
    *,
    positions: int | Sequence[int] | None = None,
    folder: str | Path | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> Labelled:
    """Activations at `sites` (names or globs) of every labelled token of `texts`.

    positions: for one label per text, where it goes (default the last token); for per-token
    labels, keep only these positions. folder: write the activations to an on-disk cache
    there (resumable; labels beside it) instead of holding them in memory. Edits held with
    `model.edit(...)` apply (e.g. an eraser's)."""
    from ..dictionary.source import resolve_sites

    names = resolve_sites(model, sites)
    prep = prepare(model, texts, labels, positions)
    if folder is not None:
        return _on_disk(model, names, prep, Path(folder), batch_size, progress)
    store = _in_memory(model, names, prep, batch_size, progress)
    keep = prep.labels >= 0
    return Labelled(
        model.name,
        names,
        prep.classes,
        prep.labels[keep],
        prep.tokens[keep],
        prep.texts[keep],
        store,
        torch.arange(int(keep.sum())),
    )


def _in_memory(model, names, prep: Prepared, batch_size: int, progress: bool) -> dict[str, Tensor]:
    from tqdm.auto import tqdm

    tokens, mask, y = prep.tokens, prep.mask, prep.labels
    parts: dict[str, list[Tensor]] = {s: [] for s in names}
    for i in tqdm(range(0, len(tokens), batch_size), desc="collecting", unit="batch", disable=not progress):
        run = model.run(tokens[i : i + batch_size], attention_mask=mask[i : i + batch_size], record=names, logits=False)
        keep = y[i : i + batch_size] >= 0
        for s in names:
            value = run.cache[s].flatten(2)[keep[:, : run.cache[s].shape[1]].to(run.cache[s].device)].cpu()
            parts[s].append(value if value.dtype == torch.float64 else value.float())  # float64 models stay exact
    store = {s: torch.cat(v) for s, v in parts.items()}
    for s, a in store.items():
        check_finite(a, s)
    return store


def _on_disk(model, names, prep: Prepared, folder: Path, batch_size: int, progress: bool) -> Labelled:
    """Every position of the (right-padded) windows into the activation cache; the labelled
    rows are those with a label (padding comes last in a causal model, so it changes nothing)."""
    from ..dictionary.cache import write_cache
    from ..dictionary.source import SourceConfig

    tokens, y, texts_of, classes = prep.tokens, prep.labels, prep.texts, prep.classes
    cfg = SourceConfig(exclude_first=False, model_batch=batch_size)
    write_cache(model, names, tokens, folder, cfg=cfg, progress=progress)
    flat = y.flatten()
    keep = flat >= 0
    write_tensors(
        folder / "labels.safetensors",
        {"labels": flat, "groups": tokens.flatten(), "texts": texts_of.flatten()},
    )
    write_json(folder / "labels.json", {"model": model.name, "classes": list(classes)})
    return Labelled(
        model.name,
        names,
        classes,
        flat[keep],
        tokens.flatten()[keep],
        texts_of.flatten()[keep],
        CachedRows(folder, names),
        keep.nonzero().flatten(),
        folder,
    )


def read_collected(folder: str | Path) -> Labelled:
    """The labelled activations that `collect(..., folder=)` wrote."""
    from ..dictionary.cache import read_manifest

    folder = Path(folder)
    meta = read_manifest(folder)
    if not (folder / "labels.json").is_file():
        raise MechscopeError(f"'{folder}' is an activation cache without labels: write it with concepts.collect")
    info = read_json(folder / "labels.json")
    t = read_tensors(folder / "labels.safetensors", what="labels")
    keep = t["labels"] >= 0
    return Labelled(
        info.get("model", ""),
        list(meta["sites"]),
        tuple(info["classes"]),
        t["labels"][keep],
        t["groups"][keep],
        t["texts"][keep],
        CachedRows(folder, meta["sites"]),
        keep.nonzero().flatten(),
        folder,
    )
