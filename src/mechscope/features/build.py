"""`build`: a feature store in one streaming pass over a corpus, resumable and incremental.

    store = ms.features.build(model, "runs/sae", "corpus/*.txt", "runs/store", tokens=2**20)

Per batch of contexts: one forward pass recording the dictionary's site(s), one encode, one
`Accumulator.update`; the batch's tokens go into the store (for example windows). Every
`checkpoint_every` batches the accumulator is saved (state.safetensors, atomically): a build
killed at any moment resumes from the last checkpoint and ends with the same store. Building
into an existing store with a new corpus adds it (the statistics merge exactly); the same
corpus again is recognised and nothing is recomputed."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from .. import io
from ..dictionary import SparseCoder, read
from ..dictionary.fingerprint import model_identity
from ..errors import MechscopeError
from . import corpus as corpus_mod
from .accumulate import Accumulator
from .config import BuildConfig
from .finalize import finalize
from .reader import LatentReader
from .schema import STATE_FILE, connect, read_meta, write_meta
from .store import FeatureStore

log = logging.getLogger(__name__)


def dictionary_identity(coder: SparseCoder) -> dict:
    """The dictionary's shape and a SHA-256 of its weights (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, value in sorted(coder.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    c = coder.cfg
    return {
        "arch": c.arch,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "hook_name": c.hook_name,
        "blocks": list(c.blocks),
        "target_hook": c.target_hook,
        "sha256": digest.hexdigest(),
    }


def _models(model) -> dict:
    return dict(model) if isinstance(model, Mapping) else {"": model}


def _check_identity(db: sqlite3.Connection, key: str, now: dict, folder: Path) -> None:
    saved = read_meta(db, key)
    if saved is None:
        write_meta(db, key, now)
    elif saved != now:
        what = "model" if key == "models" else "dictionary"
        raise MechscopeError(
            f"{folder} was built with another {what} ({json.dumps(saved)[:80]}...): give a new --out "
            f"for this {what}, or the {what} the store was built with"
        )


def _settings(db: sqlite3.Connection, cfg: BuildConfig, folder: Path) -> BuildConfig:
    saved = read_meta(db, "cfg")
    if saved is None:
        write_meta(db, "cfg", cfg.to_dict())
        return cfg
    stored = BuildConfig.from_dict(saved)
    if cfg != BuildConfig() and not stored.same_statistics(cfg):
        raise MechscopeError(f"{folder} was built with other settings ({saved}): adding to it reuses them; omit them")
    return stored


def _load_state(folder: Path, acc: Accumulator) -> None:
    path = folder / STATE_FILE
    if not path.exists():
        return
    with safe_open(str(path), "pt") as f:
        n_tokens = int((f.metadata() or {})["n_tokens"])
    acc.load(io.read_tensors(path, "feature store state"), n_tokens)


def _checkpoint(db: sqlite3.Connection, folder: Path, acc: Accumulator) -> None:
    db.commit()  # the corpus rows first: a state never refers to tokens the database lacks
    io.write_tensors(folder / STATE_FILE, acc.state(), metadata={"n_tokens": str(acc.n_tokens)}, durable=True)


def _source(db: sqlite3.Connection, identity: dict, acc: Accumulator) -> tuple[int, int, bool]:
    """(source id, tokens of it already in the state, done) — a new row for a new corpus."""
    db.execute("DELETE FROM corpus WHERE first_token >= ?", (acc.n_tokens,))  # written after the last checkpoint
    text = json.dumps(identity, sort_keys=True)
    rows = db.execute("SELECT id, identity, first_token, done FROM sources ORDER BY id").fetchall()
    for sid, ident, first, done in rows:
        if ident == text:
            return sid, acc.n_tokens - first if not done else 0, bool(done)
    for _, ident, _, _ in rows:
        saved = json.loads(ident)
        if {**saved, "max_tokens": None} == {**identity, "max_tokens": None}:
            raise MechscopeError(
                f"this store already holds this corpus read to another --tokens ({saved.get('max_tokens')}): "
                "adding it again would count its text twice; build a new store, or add other text"
            )
    unfinished = [json.loads(ident) for _, ident, _, done in rows if not done]
    if unfinished:
        raise MechscopeError(
            f"this store's build over {unfinished[0].get('path', unfinished[0].get('kind'))} was interrupted: "
            "rerun the build with that corpus to finish it before adding another"
        )
    cur = db.execute("INSERT INTO sources (identity, first_token, done) VALUES (?, ?, 0)", (text, acc.n_tokens))
    db.commit()
    return int(cur.lastrowid or 0), 0, False


def _skip(stream, n_contexts: int, db: sqlite3.Connection, first: int, ctx_len: int) -> None:
    """Skip the contexts a resumed build already read, checking (batch by batch) that they
    are the ones stored."""
    if n_contexts == 0:
        return
    rows = db.execute("SELECT tokens FROM corpus WHERE first_token >= ? ORDER BY first_token", (first,))
    for (stored,) in rows:
        n = len(stored) // (4 * ctx_len)
        seen = [row for _, row in zip(range(n), stream)]
        if len(seen) < n or torch.stack(seen).to(torch.int32).numpy().tobytes() != stored:
            raise MechscopeError("the corpus changed since the interrupted build: rerun it with the same files")


def build(
    model,
    dictionary: str | Path | SparseCoder,
    corpus: corpus_mod.Corpus,
    out: str | Path,
    *,
    tokens: int | None = None,
    cfg: BuildConfig = BuildConfig(),
    text_field: str = "text",
) -> FeatureStore:
    """Build (or resume, or add `corpus` to) the feature store at `out`; `model` is a Model,
    or {label: Model} for a crosscoder over two models. `tokens`: read at most this many."""
    models = _models(model)
    coder = dictionary if isinstance(dictionary, SparseCoder) else read(dictionary)
    coder.eval()
    reader = LatentReader(models, coder)
    folder = Path(out)
    with io.folder_lock(folder):
        db = connect(folder, readonly=False)
        try:
            _check_identity(db, "models", {k: model_identity(m) for k, m in models.items()}, folder)
            _check_identity(db, "dictionary", dictionary_identity(coder), folder)
            if read_meta(db, "dictionary_path") is None and not isinstance(dictionary, SparseCoder):
                write_meta(db, "dictionary_path", str(Path(dictionary).resolve()))
            cfg = _settings(db, cfg, folder)
            db.commit()
            acc = Accumulator(coder.cfg.d_sae, cfg)
            _load_state(folder, acc)
            added = _stream_source(db, folder, acc, reader, models, corpus, tokens, cfg, text_field)
            if added or read_meta(db, "finalized_tokens") != acc.n_tokens:
                finalize(db, folder, acc, coder, models)
        finally:
            db.close()
    return FeatureStore(folder)


def _stream_source(db, folder, acc, reader, models, corpus, tokens, cfg, text_field) -> bool:
    """Read the corpus into `acc` (resuming where a killed build stopped); False if it was already in."""
    first_model = next(iter(models.values()))
    tokenizer = getattr(first_model, "tokenizer", None)
    identity = corpus_mod.identity(corpus, cfg.ctx_len, tokens, text_field)
    sid, done_tokens, done = _source(db, identity, acc)
    if done:
        log.info("this corpus is already in the store: nothing to add")
        return False
    first = acc.n_tokens - done_tokens
    stream = corpus_mod.contexts(corpus, tokenizer, cfg.ctx_len, tokens, text_field)
    _skip(stream, done_tokens // cfg.ctx_len, db, first, cfg.ctx_len)
    bar = tqdm(desc="feature store", unit="tok", disable=None, initial=done_tokens)
    for i, batch in enumerate(corpus_mod.batches(stream, cfg.batch_size), 1):
        acc.update(reader(batch), batch)
        db.execute(
            "INSERT INTO corpus (first_token, tokens) VALUES (?, ?)",
            (acc.n_tokens - batch.numel(), batch.to(torch.int32).numpy().tobytes()),
        )
        bar.update(batch.numel())
        if i % cfg.checkpoint_every == 0:
            _checkpoint(db, folder, acc)
    bar.close()
    if acc.n_tokens == first:
        db.execute("DELETE FROM sources WHERE id = ?", (sid,))
        db.commit()
        raise MechscopeError(
            f"the corpus gave no context of {cfg.ctx_len} tokens (it is empty or shorter): give more text"
        )
    _checkpoint(db, folder, acc)
    db.execute("UPDATE sources SET done = 1 WHERE id = ?", (sid,))
    db.commit()
    return True
