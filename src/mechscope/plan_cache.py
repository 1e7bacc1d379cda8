"""The per-call work of a hooked pass that depends only on a model's site table and the
names asked for, done once per signature: glob resolution (`resolve`) and the hook layout
of a record/edit pass (`layout`: the module boundary each site is read at, sites in forward
order). A 1 x 16 forward of a 2-layer model spends a noticeable share of its time there.

Entries are kept per `SiteTable` (weakly: a model that goes takes its entries with it), at
most `LIMIT` signatures each (then that table's entries start over). A table does not change
after it is built, so an entry never goes stale; module objects are not cached (peft and
users may swap them), only names.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterable

from .sites import Site, SiteTable

LIMIT = 512
"""Signatures kept per table."""
ENABLED = True
"""False: every call works it out again (bench/hooks.py times both)."""

Layout = tuple[tuple[tuple[str, str], tuple[Site, ...]], ...]
"""((module path, boundary "in"/"out"), sites read there in forward order) per hooked boundary."""

_CACHE: weakref.WeakKeyDictionary[SiteTable, dict[tuple, object]] = weakref.WeakKeyDictionary()


def _entries(table: SiteTable) -> dict[tuple, object]:
    if not ENABLED:
        return {}
    entries = _CACHE.get(table)
    if entries is None or len(entries) >= LIMIT:
        entries = _CACHE[table] = {}
    return entries


def resolve(table: SiteTable, patterns: str | Iterable[str]) -> list[str]:
    """`table.resolve(patterns)`, cached per patterns (unknown names raise as there)."""
    patterns = patterns if isinstance(patterns, str) else list(patterns)
    if not isinstance(patterns, str) and not all(isinstance(p, str) for p in patterns):
        return table.resolve(patterns)  # its own error message
    key = ("resolve", patterns) if isinstance(patterns, str) else ("resolve", *patterns)
    entries = _entries(table)
    names = entries.get(key)
    if names is None:
        names = entries[key] = tuple(table.resolve(patterns))
    assert isinstance(names, tuple)
    return list(names)


def layout(table: SiteTable, names: Iterable[str]) -> tuple[Layout, frozenset[str]]:
    """The hooks a pass over `names` needs: (module, boundary) -> its sites in forward
    order, and the module paths flattened-token sites take their rows from."""
    wanted = frozenset(names)
    entries = _entries(table)
    key = ("layout", wanted)
    hit = entries.get(key)
    if hit is None:
        groups: dict[tuple[str, str], list[Site]] = defaultdict(list)
        for name in sorted(wanted, key=table.order.__getitem__):
            site = table[name]
            groups[(site.module, site.boundary)].append(site)
        rows_from = frozenset(s.rows_from for sites in groups.values() for s in sites if s.rows_from)
        hit = entries[key] = (tuple((k, tuple(v)) for k, v in groups.items()), rows_from)
    return hit  # type: ignore[return-value]
