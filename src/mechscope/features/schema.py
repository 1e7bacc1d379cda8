"""The store's SQLite file: its schema (versioned), opening it safely, and its `meta` table.

One file, WAL journal (readers never block the writer), opened read-only by queries.
Schema changes bump SCHEMA_VERSION; an older or newer store is refused in one line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from ..errors import MechscopeError

SCHEMA_VERSION = 1
DB_FILE, STATE_FILE, ARRAYS_FILE = "store.sqlite", "state.safetensors", "arrays.safetensors"
FORMAT = "mechscope.features"

TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    id INTEGER PRIMARY KEY, identity TEXT NOT NULL, first_token INTEGER NOT NULL, done INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS corpus (first_token INTEGER PRIMARY KEY, tokens BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS vocab (id INTEGER PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS latents (
    id INTEGER PRIMARY KEY, count INTEGER NOT NULL, density REAL NOT NULL, mean REAL NOT NULL,
    max REAL NOT NULL, kind TEXT NOT NULL, top_token TEXT NOT NULL, tokens TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS latents_density ON latents(density);
CREATE INDEX IF NOT EXISTS latents_max ON latents(max);
CREATE TABLE IF NOT EXISTS examples (
    latent INTEGER NOT NULL, kind TEXT NOT NULL, rank INTEGER NOT NULL, token_index INTEGER NOT NULL,
    value REAL NOT NULL, tokens BLOB NOT NULL, acts BLOB, PRIMARY KEY (latent, kind, rank));
CREATE TABLE IF NOT EXISTS explanations (latent INTEGER PRIMARY KEY, text TEXT NOT NULL, source TEXT NOT NULL);
"""


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}?mode=rwc"
    try:
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as err:
        raise MechscopeError(
            f"{path} is not a readable feature store database ({err}): it is corrupt or another file; "
            "rebuild the store with `mechscope features build`"
        ) from None
    return db


def connect(folder: Path, *, readonly: bool = True) -> sqlite3.Connection:
    """The store's database; a writer creates the tables, a reader checks the schema version."""
    path = Path(folder) / DB_FILE
    if readonly and not path.is_file():
        raise MechscopeError(
            f"{folder} is not a feature store (no {DB_FILE}): build one with `mechscope features build`"
        )
    db = _connect(path, readonly)
    try:
        if not readonly:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(TABLES)
            if read_meta(db, "schema_version") is None:
                write_meta(db, "format", FORMAT)
                write_meta(db, "schema_version", SCHEMA_VERSION)
                db.commit()
        version = read_meta(db, "schema_version")
    except sqlite3.DatabaseError as err:
        db.close()
        raise MechscopeError(f"{path} is corrupt ({err}): rebuild the store with `mechscope features build`") from None
    if version != SCHEMA_VERSION or read_meta(db, "format") != FORMAT:
        db.close()
        raise MechscopeError(
            f"{folder} holds a feature store of schema {version} but this mechscope reads schema "
            f"{SCHEMA_VERSION}: rebuild it with this version"
        )
    return db


def read_meta(db: sqlite3.Connection, key: str):
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.OperationalError:  # no meta table: not a store
        return None
    return None if row is None else json.loads(row[0])


def write_meta(db: sqlite3.Connection, key: str, value) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))
