"""`FeatureStore`: queries on a built store (read-only; safe to share between threads).

store = ms.features.open("runs/store")
store.info()                                   # model, dictionary, tokens, dead latents
store.feature(12)                              # a `Feature`: examples, histogram, logits, ...
store.search(token=" def", sort="density")     # a `Page` of latent summaries
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import MechscopeError
from .accumulate import bin_edges
from .schema import ARRAYS_FILE, connect

FEATURE_ARRAYS = (
    "hist",
    "logit_up_ids",
    "logit_up_val",
    "logit_down_ids",
    "logit_down_val",
    "neighbour_ids",
    "neighbour_cos",
    "co_ids",
)
"""The per-latent array rows a feature page reads."""
SORTS = {"id": "id", "density": "density", "max": "max", "mean": "mean", "count": "count"}
"""Sort keys of `search` (a table the code owns: never a column name from a request)."""


@dataclass
class Example:
    """One context window: its tokens, the activating token's position in it, the latent's
    activation there (and, for top examples, at every position of the window)."""

    value: float
    token_index: int
    tokens: list[str]
    centre: int
    acts: list[float] | None = None


@dataclass
class Feature:
    """Everything the store knows about one latent."""

    id: int
    count: int
    density: float
    mean: float
    max: float
    kind: str
    explanation: str
    top: list[Example]
    samples: list[Example]
    histogram: dict
    """`edges` (len n+1) and `heights` (len n): the non-empty range of the fixed log bins."""
    logits_up: list[tuple[str, float]] = field(default_factory=list)
    logits_down: list[tuple[str, float]] = field(default_factory=list)
    neighbours: list[tuple[int, float]] = field(default_factory=list)
    co_occurring: list[tuple[int, int]] = field(default_factory=list)
    """(latent, how many of this latent's top examples it is also active at), most first."""

    def to_dict(self) -> dict:
        """Plain JSON-ready data (shallow: dataclasses.asdict's deep copies cost more than the query)."""
        out = {f: getattr(self, f) for f in self.__dataclass_fields__}
        out["top"], out["samples"] = [vars(e) for e in self.top], [vars(e) for e in self.samples]
        return out


@dataclass
class Page:
    total: int
    rows: list[dict]
    page: int
    per_page: int


class FeatureStore:
    """A built feature store folder (see the module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise MechscopeError(f"{folder} is not a folder: give a feature store built by `mechscope features build`")
        db = self._db()
        try:
            self.meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta").fetchall()}
            self.vocab = dict(db.execute("SELECT id, text FROM vocab").fetchall())
        finally:
            db.close()
        done = self.meta.get("finalized_tokens")
        if done is None or not (self.folder / ARRAYS_FILE).is_file():
            raise MechscopeError(f"{folder} is an unfinished feature store: rerun the build to complete it")
        self._arrays = safe_open(str(self.folder / ARRAYS_FILE), "pt")
        if int((self._arrays.metadata() or {}).get("n_tokens", -1)) != done:
            raise MechscopeError(f"{folder}: {ARRAYS_FILE} does not match the database; rerun the build to repair it")
        self._lock = threading.Lock()
        self._local = threading.local()  # one read-only connection per thread, kept (see `_reader`)
        self._readers: list[sqlite3.Connection] = []
        self.d_sae = int(self.meta["d_sae"])
        self.cfg = self.meta["cfg"]

    def _db(self) -> sqlite3.Connection:
        return connect(self.folder, readonly=True)

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection, opened once: a server's per-request queries skip
        the open and schema check, and sqlite3 keeps each statement prepared per connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._db()
            with self._lock:
                self._readers.append(db)
        return db

    def _rows(self, names: tuple[str, ...], i: int) -> dict[str, torch.Tensor]:
        """Row `i` of several arrays, read under one lock."""
        with self._lock:
            keys = set(self._arrays.keys())
            return {n: self._arrays.get_slice(n)[i : i + 1][0] if n in keys else torch.zeros(0) for n in names}

    def _row(self, name: str, i: int) -> torch.Tensor:
        with self._lock:
            if name not in self._arrays.keys():
                return torch.zeros(0)
            return self._arrays.get_slice(name)[i : i + 1][0]

    def array(self, name: str) -> torch.Tensor:
        """A whole dense array (count, hist, top_val, neighbour_ids, logit_up_ids, ...)."""
        with self._lock:
            return self._arrays.get_tensor(name)

    def info(self) -> dict:
        db = self._db()
        try:
            dead = db.execute("SELECT count(*) FROM latents WHERE count = 0").fetchone()[0]
        finally:
            db.close()
        m = self.meta
        return {
            "path": str(self.folder),
            "models": m.get("models"),
            "dictionary": m.get("dictionary"),
            "kind": m.get("dictionary_kind"),
            "d_sae": self.d_sae,
            "n_tokens": m.get("n_tokens"),
            "dead": dead,
            "cfg": self.cfg,
            "schema_version": m.get("schema_version"),
        }

    def check_latent(self, latent: int) -> int:
        if not 0 <= latent < self.d_sae:
            raise MechscopeError(f"no latent {latent}: this store has {self.d_sae} (0-{self.d_sae - 1})")
        return latent

    def text(self, token_id: int) -> str:
        return self.vocab.get(int(token_id), str(token_id)) if token_id >= 0 else ""

    def _example(self, row) -> Example:
        _, _, token_index, value, blob, acts = row
        ids = torch.frombuffer(bytearray(blob), dtype=torch.int32).tolist()
        first = next((j for j, t in enumerate(ids) if t >= 0), 0)
        last = max((j for j, t in enumerate(ids) if t >= 0), default=-1)
        values = None if acts is None else torch.frombuffer(bytearray(acts), dtype=torch.float32).tolist()
        return Example(
            value=value,
            token_index=token_index,
            tokens=[self.text(t) for t in ids[first : last + 1]],
            centre=int(self.cfg["before"]) - first,
            acts=None if values is None else values[first : last + 1],
        )

    def examples(self, latent: int) -> tuple[list[Example], list[Example]]:
        """(top examples, strongest first; sampled examples, weakest bin first)."""
        rows = (
            self._reader()
            .execute(
                "SELECT kind, rank, token_index, value, tokens, acts FROM examples WHERE latent = ? "
                "ORDER BY kind, rank",
                (self.check_latent(latent),),
            )
            .fetchall()
        )
        return [self._example(r) for r in rows if r[0] == "top"], [self._example(r) for r in rows if r[0] == "sample"]

    def histogram(self, latent: int, heights: torch.Tensor | None = None) -> dict:
        heights = self._row("hist", latent) if heights is None else heights
        nz = heights.nonzero().flatten()
        if len(nz) == 0:
            return {"edges": [], "heights": []}
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        return {"edges": bin_edges()[lo : hi + 1].tolist(), "heights": heights[lo:hi].tolist()}

    def _pairs(self, i: torch.Tensor, v: torch.Tensor) -> list[tuple[str, float]]:
        return [(self.text(int(a)), float(b)) for a, b in zip(i.tolist(), v.tolist())]

    def co_occurring(self, latent: int, n: int = 10, co_ids: torch.Tensor | None = None) -> list[tuple[int, int]]:
        ids = (self._row("co_ids", latent) if co_ids is None else co_ids).flatten()
        ids = ids[ids >= 0].long()
        if len(ids) == 0:
            return []
        # counts over the few ids present (not a d_sae-long bincount); most first, then lowest id
        found, counts = ids.unique(return_counts=True)
        order = sorted(zip(counts.tolist(), found.tolist()), key=lambda c: (-c[0], c[1]))[:n]
        return [(i, c) for c, i in order]

    def feature(self, latent: int) -> Feature:
        """Everything about one latent (see `Feature`): one query for its row and explanation,
        one for its examples, one locked read of its array rows."""
        row = (
            self._reader()
            .execute(
                "SELECT l.count, l.density, l.mean, l.max, l.kind, coalesce(e.text, '') "
                "FROM latents l LEFT JOIN explanations e ON e.latent = l.id WHERE l.id = ?",
                (self.check_latent(latent),),
            )
            .fetchone()
        )
        top, samples = self.examples(latent)
        a = self._rows(FEATURE_ARRAYS, latent)
        count, density, mean, top_value, kind, explanation = row
        return Feature(
            id=latent,
            count=count,
            density=density,
            mean=mean,
            max=top_value,
            kind=kind,
            explanation=explanation,
            top=top,
            samples=samples,
            histogram=self.histogram(latent, a["hist"]),
            logits_up=self._pairs(a["logit_up_ids"], a["logit_up_val"]),
            logits_down=self._pairs(a["logit_down_ids"], a["logit_down_val"]),
            neighbours=[(int(i), float(c)) for i, c in zip(a["neighbour_ids"].tolist(), a["neighbour_cos"].tolist())],
            co_occurring=self.co_occurring(latent, co_ids=a["co_ids"]),
        )

    def dead(self) -> list[int]:
        """Latents that never fired on the store's corpus."""
        db = self._db()
        try:
            return [r[0] for r in db.execute("SELECT id FROM latents WHERE count = 0 ORDER BY id")]
        finally:
            db.close()

    def search(
        self,
        token: str | None = None,
        explanation: str | None = None,
        min_density: float | None = None,
        max_density: float | None = None,
        sort: str = "max",
        descending: bool = True,
        page: int = 0,
        per_page: int = 50,
        include_dead: bool = False,
    ) -> Page:
        """Latents whose top tokens contain `token` (a substring of one token's text), whose
        explanation contains `explanation`, with density in [min, max]; sorted and paged."""
        if sort not in SORTS:
            raise MechscopeError(f"unknown sort {sort!r}: choose one of {', '.join(SORTS)}")
        if page < 0 or not 1 <= per_page <= 1000:
            raise MechscopeError("page must be 0 or more and per_page between 1 and 1000")
        where: list[str] = ["1"]
        args: list[str | float] = []
        if token:
            where.append("instr(l.tokens, ?) > 0")
            args.append(token)
        if explanation:
            where.append("instr(lower(e.text), lower(?)) > 0")
            args.append(explanation)
        if min_density is not None:
            where.append("l.density >= ?")
            args.append(min_density)
        if max_density is not None:
            where.append("l.density <= ?")
            args.append(max_density)
        if not include_dead:
            where.append("l.count > 0")
        join = "JOIN" if explanation else "LEFT JOIN"  # only explained latents can match: start from those
        sql = f"FROM latents l {join} explanations e ON e.latent = l.id WHERE {' AND '.join(where)}"
        order = f"l.{SORTS[sort]} {'DESC' if descending else 'ASC'}, l.id"
        db = self._reader()
        total = db.execute(f"SELECT count(*) {sql}", args).fetchone()[0]
        rows = db.execute(
            f"SELECT l.id, l.count, l.density, l.mean, l.max, l.kind, l.top_token, coalesce(e.text, '') {sql} "
            f"ORDER BY {order} LIMIT ? OFFSET ?",
            [*args, per_page, page * per_page],
        ).fetchall()
        keys = ("id", "count", "density", "mean", "max", "kind", "top_token", "explanation")
        return Page(total, [dict(zip(keys, r)) for r in rows], page, per_page)

    def close(self) -> None:
        with self._lock:
            for db in self._readers:
                db.close()
            self._readers.clear()
        self._local = threading.local()
        self._arrays = None  # type: ignore[assignment]


def open_store(path: str | Path) -> FeatureStore:
    """Open a built feature store for queries (`ms.features.open`)."""
    return FeatureStore(path)


def set_explanations(path: str | Path, explanations: dict[int, str], source: str = "user") -> None:
    """Attach text explanations to latents (searchable with `search(explanation=...)`)."""
    store = FeatureStore(path)
    for latent in explanations:
        store.check_latent(int(latent))
    db = connect(Path(path), readonly=False)
    try:
        with db:
            db.executemany(
                "INSERT OR REPLACE INTO explanations (latent, text, source) VALUES (?, ?, ?)",
                [(int(k), str(v), source) for k, v in explanations.items()],
            )
    finally:
        db.close()
