"""Turning a build's accumulator into the store's queryable form: dense arrays in
arrays.safetensors and, in one SQLite transaction, the latents table, the example windows
(top-k with per-token activations, samples with their tokens) and the vocabulary."""

from __future__ import annotations

import copy
import logging
import sqlite3
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from .. import io
from ..dictionary import SparseCoder
from ..dictionary.crosscoder import Crosscoder
from ..tokens import decode_many
from .accumulate import SAMPLE_GROUP, Accumulator
from .schema import ARRAYS_FILE, write_meta
from .weights import logit_effects, neighbours

log = logging.getLogger(__name__)


def latent_kinds(coder: SparseCoder) -> list[str]:
    """A two-block crosscoder's latents as shared / a_only / b_only / dead (by relative decoder
    norm, `dictionary.diff`); other dictionaries' latents have no kind ('')."""
    if isinstance(coder, Crosscoder) and coder.n_blocks == 2:
        from ..dictionary.diffing import KINDS, diff

        return [KINDS[int(k)] for k in diff(coder, 0, 1).kind]
    return [""] * coder.cfg.d_sae


def _vocab(db: sqlite3.Connection, model) -> dict[int, str]:
    rows = db.execute("SELECT id, text FROM vocab").fetchall()
    if rows:
        return dict(rows)
    size = model.dims.d_vocab
    vocab = decode_many(model, range(size))
    db.executemany("INSERT INTO vocab (id, text) VALUES (?, ?)", list(vocab.items()))
    return vocab


def _weight_arrays(folder: Path, acc: Accumulator, coder: SparseCoder, model) -> dict[str, Tensor]:
    """Logit effects and neighbours: from the weights alone, so an add reuses the last build's."""
    path = folder / ARRAYS_FILE
    if path.exists():  # the build checked the dictionary is the same one
        with safe_open(str(path), "pt") as f:
            names = [n for n in f.keys() if n.startswith(("logit_", "neighbour_"))]
            old = {n: f.get_tensor(n) for n in names}
        if "neighbour_ids" in old and old["neighbour_ids"].shape[1] == min(acc.cfg.neighbours, acc.d - 1):
            return old
    nb_ids, nb_cos = neighbours(coder, acc.cfg.neighbours)
    return {"neighbour_ids": nb_ids, "neighbour_cos": nb_cos, **logit_effects(model, coder, acc.cfg.logits)}


def _arrays(folder: Path, acc: Accumulator, coder: SparseCoder, model) -> None:
    arrays: dict[str, Tensor] = {
        "count": acc.count,
        "total": acc.total,
        "hist": acc.hist,
        "top_val": acc.top_val,
        "co_ids": acc.co_ids,
        "co_val": acc.co_val,
        **_weight_arrays(folder, acc, coder, model),
    }
    io.write_tensors(folder / ARRAYS_FILE, arrays, metadata={"n_tokens": str(acc.n_tokens)}, durable=True)


def _latent_rows(acc: Accumulator, vocab: dict[int, str], kinds: list[str]):
    before = acc.cfg.before
    centres = acc.top_toks[:, :, before].tolist()
    for lat in range(acc.d):
        count = int(acc.count[lat])
        seen = list(dict.fromkeys(vocab.get(t, "") for t in centres[lat] if t >= 0))
        yield (
            lat,
            count,
            count / max(acc.n_tokens, 1),
            float(acc.total[lat]) / max(count, 1),
            float(acc.top_val[lat, 0]),
            kinds[lat],
            seen[0] if seen else "",
            "\n" + "\n".join(seen) + "\n",
        )


def _top_rows(acc: Accumulator):
    lat, rank = (acc.top_idx >= 0).nonzero().unbind(1)
    idx, val = acc.top_idx[lat, rank].tolist(), acc.top_val[lat, rank].tolist()
    toks, acts = acc.top_toks[lat, rank].numpy(), acc.top_acts[lat, rank].numpy()
    for i, (l_, r) in enumerate(zip(lat.tolist(), rank.tolist())):
        yield (l_, "top", r, idx[i], val[i], toks[i].tobytes(), acts[i].tobytes())


def _sample_rows(db: sqlite3.Connection, acc: Accumulator):
    """Sampled examples with their token windows, read from the stored corpus batch by batch."""
    ctx, before, after = acc.cfg.ctx_len, acc.cfg.before, acc.cfg.after
    flat = acc.s_idx.reshape(acc.d, -1)
    lat, slot = (flat >= 0).nonzero().unbind(1)
    gidx = flat[lat, slot]
    order = torch.argsort(gidx, stable=True)
    lat, slot, gidx = lat[order], slot[order], gidx[order]
    vals = acc.s_val.reshape(acc.d, -1)[lat, slot]
    offsets = torch.arange(-before, after + 1)
    for first, blob in db.execute("SELECT first_token, tokens FROM corpus ORDER BY first_token"):  # lazily: bounded
        tokens = torch.frombuffer(bytearray(blob), dtype=torch.int32)
        lo, hi = torch.searchsorted(gidx, torch.tensor([first, first + len(tokens)])).tolist()
        if lo == hi:
            continue
        g = gidx[lo:hi] - first
        start = (g - g % ctx)[:, None]
        pos = g[:, None] + offsets
        inside = (pos >= start) & (pos < start + ctx)
        windows = torch.where(inside, tokens[torch.minimum(pos.clamp_min(0), start + ctx - 1)], -1).numpy()
        rows = zip(lat[lo:hi].tolist(), slot[lo:hi].tolist(), gidx[lo:hi].tolist(), vals[lo:hi].tolist())
        for i, (l_, s_, g_, v_) in enumerate(rows):
            yield (l_, "sample", s_, g_, v_, windows[i].astype("int32").tobytes(), None)


def finalize(db: sqlite3.Connection, folder: Path, acc: Accumulator, coder: SparseCoder, models: dict) -> None:
    model = next(iter(models.values()))
    acc = copy.copy(acc)  # the same statistics with each top-k list in rank order (read-only here)
    vars(acc).update(acc.sorted_top())
    _arrays(folder, acc, coder, model)
    kinds = latent_kinds(coder)
    with db:  # one transaction: a reader sees the old tables or the new ones
        vocab = _vocab(db, model)
        db.execute("DELETE FROM latents")
        db.execute("DELETE FROM examples")
        db.executemany("INSERT INTO latents VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _latent_rows(acc, vocab, kinds))
        db.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?)", _top_rows(acc))
        db.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?)", _sample_rows(db, acc))
        write_meta(db, "n_tokens", acc.n_tokens)
        write_meta(db, "d_sae", acc.d)
        write_meta(db, "sample_bin_decades", SAMPLE_GROUP / 10)
        write_meta(db, "dictionary_kind", _kind(coder))
        write_meta(db, "finalized_tokens", acc.n_tokens)
    log.info("feature store %s: %d latents over %d tokens", folder, acc.d, acc.n_tokens)


def _kind(coder: SparseCoder) -> str:
    if isinstance(coder, Crosscoder):
        return "crosscoder"
    return "transcoder" if coder.cfg.transcoder else "sae"
