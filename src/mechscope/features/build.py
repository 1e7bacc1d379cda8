"""`build`: a feature store in one streaming pass over a corpus, resumable and incremental.

    store = ms.features.build(model, "runs/sae", "corpus/*.txt", "runs/store", tokens=2**20)

Per batch of contexts: one forward pass recording the dictionary's site(s), one encode, one
`Accumulator.update`; the batch's tokens go into the store (for example windows). Every
`checkpoint_every` batches the accumulator is saved (state.safetensors, atomically): a build
killed at any moment resumes from the last checkpoint and ends with the same store. Building
into an existing store with a new corpus adds it (the statistics merge exactly); the same
corpus again is recognised and nothing is recomputed.

Under `torchrun` the ranks share the work: every rank reads (tokenizes) the whole corpus and
rank r runs the model and the dictionary on batches r, r + world, ... (corpus indices kept, so
ties break as in one process); at each checkpoint (every `checkpoint_every` batches of every
rank) and at the end rank 0 merges the ranks' statistics (`merge`, exact) and saves them, and
rank 0 alone writes the store: it equals a one-rank build's, bit for bit. A checkpoint covers
a prefix of the corpus whatever the world size, so a killed build resumes with any number of
ranks (one included)."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from .. import io
from ..dictionary import SparseCoder, read
from ..dictionary.fingerprint import model_identity
from ..distributed import distributed
from ..errors import MechscopeError
from . import corpus as corpus_mod
from .accumulate import Accumulator
from .config import BuildConfig
from .distributed import gather, on_rank0
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
    or {label: Model} for a crosscoder over two models. `tokens`: read at most this many.
    Under `torchrun` every rank calls it with the same arguments (see the module docstring)."""
    models = _models(model)
    coder = dictionary if isinstance(dictionary, SparseCoder) else read(dictionary)
    coder.eval()
    reader = LatentReader(models, coder)
    rank, world = distributed()
    job = _Job(Path(out), models, coder, corpus, tokens, text_field, rank, world)
    with io.folder_lock(job.folder, rank=rank, world=world):
        try:
            plan = on_rank0(rank, world, lambda: job.open(dictionary, cfg))
            cfg = BuildConfig.from_dict(plan["cfg"])
            acc = job.acc if job.acc is not None else Accumulator(coder.cfg.d_sae, cfg)  # ranks > 0: empty
            if not plan["done"]:
                acc = _read(job, acc, reader, cfg, plan)
            on_rank0(rank, world, lambda: job.finish(acc, added=not plan["done"]))
        finally:
            job.close()
    return FeatureStore(job.folder)


@dataclass
class _Job:
    """One build's inputs and, on rank 0, its database, state and corpus stream."""

    folder: Path
    models: dict
    coder: SparseCoder
    corpus: corpus_mod.Corpus
    tokens: int | None
    text_field: str
    rank: int
    world: int
    db: sqlite3.Connection | None = None
    acc: Accumulator | None = None
    stream: Iterator | None = None
    sid: int = 0

    def contexts(self, cfg: BuildConfig) -> Iterator:
        tokenizer = getattr(next(iter(self.models.values())), "tokenizer", None)
        return corpus_mod.contexts(self.corpus, tokenizer, cfg.ctx_len, self.tokens, self.text_field)

    def open(self, dictionary, cfg: BuildConfig) -> dict:
        """Rank 0: check the store against this build, load its state, find where this corpus
        starts (or resumes) and skip what is already in; what every rank needs to know."""
        self.db = db = connect(self.folder, readonly=False)
        _check_identity(db, "models", {k: model_identity(m) for k, m in self.models.items()}, self.folder)
        _check_identity(db, "dictionary", dictionary_identity(self.coder), self.folder)
        if read_meta(db, "dictionary_path") is None and not isinstance(dictionary, SparseCoder):
            write_meta(db, "dictionary_path", str(Path(dictionary).resolve()))
        cfg = _settings(db, cfg, self.folder)
        db.commit()
        self.acc = acc = Accumulator(self.coder.cfg.d_sae, cfg)
        _load_state(self.folder, acc)
        identity = corpus_mod.identity(self.corpus, cfg.ctx_len, self.tokens, self.text_field)
        self.sid, done_tokens, done = _source(db, identity, acc)
        if done:
            log.info("this corpus is already in the store: nothing to add")
        else:
            self.stream = self.contexts(cfg)
            _skip(self.stream, done_tokens // cfg.ctx_len, db, acc.n_tokens - done_tokens, cfg.ctx_len)
        return {"cfg": cfg.to_dict(), "start": acc.n_tokens, "done_tokens": done_tokens, "done": done}

    def checkpoint(self, acc: Accumulator, n_tokens: int, final: bool = False) -> Accumulator:
        """Merge every rank's statistics into rank 0's and save them there (the state then
        covers the first `n_tokens` tokens); the final state has its lists in rank order."""
        acc = gather(acc, self.rank, self.world)
        if self.db is not None:
            acc.n_tokens = n_tokens
            _checkpoint(self.db, self.folder, acc.canonical() if final else acc)
        return acc

    def finish(self, acc: Accumulator, added: bool) -> dict:
        """Rank 0: mark the corpus as read and write the store's queryable form."""
        assert self.db is not None
        if added:
            self.db.execute("UPDATE sources SET done = 1 WHERE id = ?", (self.sid,))
            self.db.commit()
        if added or read_meta(self.db, "finalized_tokens") != acc.n_tokens:
            finalize(self.db, self.folder, acc, self.coder, self.models)
        return {}

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def _read(job: _Job, acc: Accumulator, reader: LatentReader, cfg: BuildConfig, plan: dict) -> Accumulator:
    """Read the rest of the corpus into the ranks' accumulators; rank 0 stores every batch's
    tokens. Returns rank 0's merged accumulator there (an empty one elsewhere)."""
    start, skip = plan["start"], plan["done_tokens"] // cfg.ctx_len
    stream = job.stream if job.stream is not None else job.contexts(cfg)
    if job.stream is None:
        for _ in zip(range(skip), stream):  # rank 0 checked them against the stored corpus
            pass
    bar = tqdm(desc="feature store", unit="tok", disable=True if job.rank else None, initial=plan["done_tokens"])
    read = 0
    for g, batch in enumerate(corpus_mod.batches(stream, cfg.batch_size)):
        if g % job.world == job.rank:
            acc.update(reader(batch), batch, start + read)  # `at` given positionally (test wrappers take *args)
        if job.db is not None:
            job.db.execute(
                "INSERT INTO corpus (first_token, tokens) VALUES (?, ?)",
                (start + read, batch.to(torch.int32).numpy().tobytes()),
            )
        read += batch.numel()
        bar.update(batch.numel())
        if (g + 1) % (cfg.checkpoint_every * job.world) == 0:
            acc = job.checkpoint(acc, start + read)
    bar.close()
    if read == 0:  # every rank read the same (empty) stream: all stop here
        if job.db is not None:
            job.db.execute("DELETE FROM sources WHERE id = ?", (job.sid,))
            job.db.commit()
        raise MechscopeError(
            f"the corpus gave no context of {cfg.ctx_len} tokens (it is empty or shorter): give more text"
        )
    return job.checkpoint(acc, start + read, final=True)
