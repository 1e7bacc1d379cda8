"""`Labelled`: activations at one or more sites, one label per row, held in memory or read
from the dictionaries' on-disk activation cache (`dictionary.cache`).

Every row also carries the text it came from (`texts`, so held-out splits never share a
text with training) and its word type (`groups`, the token id: control tasks give each
word type a random label)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import MechscopeError


def class_names(values: Sequence) -> tuple[str, ...]:
    """Sorted distinct labels as strings (numbers in numeric order)."""
    names = {str(v) for v in values}

    def key(name: str):
        try:
            return (0, float(name), name)
        except ValueError:
            return (1, 0.0, name)

    return tuple(sorted(names, key=key))


class CachedRows:
    """Rows of an on-disk activation cache (`dictionary.cache`), one reader per site."""

    def __init__(self, folder: str | Path, sites: Sequence[str]):
        from ..dictionary.cache import CacheReader

        self.readers = {s: CacheReader(folder, sites=[s]) for s in sites}
        self.widths = {s: r.widths[s] for s, r in self.readers.items()}

    def read(self, site: str, index: Tensor) -> Tensor:
        return self.readers[site].rows(index)[site]


@dataclass
class Labelled:
    """Rows of activations with labels; `x(site, index)` reads them (float32 [rows, d]).

    Invariants: `labels`, `groups`, `texts` have one entry per row; labels index `classes`;
    each site's store has a row for every entry of `rows` (the backing row of each row)."""

    model: str
    """The model the activations came from ('' for synthetic ones)."""
    sites: list[str]
    classes: tuple[str, ...]
    labels: Int[Tensor, " row"]
    groups: Int[Tensor, " row"]
    """Word type of each row (token id), for control tasks."""
    texts: Int[Tensor, " row"]
    """Which text (sequence) each row came from, for splits by text."""
    store: Mapping[str, Tensor] | CachedRows = field(repr=False)
    """{site: [backing rows, d]} in memory, or rows of an on-disk activation cache."""
    rows: Int[Tensor, " row"] = field(repr=False)
    """The backing row of each row."""
    folder: Path | None = None
    """The cache folder when the activations are on disk."""

    def __post_init__(self):
        n = len(self.labels)
        if not (len(self.groups) == len(self.texts) == len(self.rows) == n):
            raise MechscopeError("labels, groups, texts and rows must have one entry per row")

    def __len__(self) -> int:
        return len(self.labels)

    def width(self, site: str) -> int:
        self._check_site(site)
        if isinstance(self.store, Mapping):
            return int(self.store[site].shape[-1])
        assert isinstance(self.store, CachedRows)
        return self.store.widths[site]

    def _check_site(self, site: str) -> None:
        if site not in self.sites:
            raise MechscopeError(f"no activations at '{site}' here (collected: {', '.join(self.sites)})")

    def x(self, site: str, index: Tensor | None = None) -> Float[Tensor, "row d"]:
        """Activations of rows `index` (all rows when None) at `site`, float32 (float64 kept)."""
        self._check_site(site)
        backing = self.rows if index is None else self.rows[index]
        if isinstance(self.store, Mapping):
            a = self.store[site][backing]
            return a if a.dtype == torch.float64 else a.float()  # float64 stays exact (erasure oracles)
        assert isinstance(self.store, CachedRows)
        return self.store.read(site, backing)

    def subset(self, index: Tensor) -> Labelled:
        """The rows `index`, sharing the same store."""
        return Labelled(
            self.model,
            self.sites,
            self.classes,
            self.labels[index],
            self.groups[index],
            self.texts[index],
            self.store,
            self.rows[index],
            self.folder,
        )

    def with_labels(self, labels: Tensor, classes: tuple[str, ...]) -> Labelled:
        """The same rows with other labels (a control task, a relabelling)."""
        return Labelled(
            self.model, self.sites, classes, labels, self.groups, self.texts, self.store, self.rows, self.folder
        )

    @property
    def majority(self) -> float:
        """The share of the most common label: what a constant guess scores."""
        return float(torch.bincount(self.labels, minlength=len(self.classes)).max()) / max(len(self), 1)


def from_tensors(
    acts: Mapping[str, Tensor] | Sequence[Tensor] | Tensor,
    labels: Sequence | Tensor,
    *,
    groups: Tensor | None = None,
    texts: Tensor | None = None,
    model: str = "",
) -> Labelled:
    """`Labelled` rows from activations you already have: {site: [n, d]}, or a list /
    [layers, n, d] tensor (sites named `layer0`, `layer1`, ...), and n labels."""
    if isinstance(acts, Tensor) and acts.dim() == 2:
        acts = {"acts": acts}
    store = dict(acts) if isinstance(acts, Mapping) else {f"layer{i}": a for i, a in enumerate(acts)}
    if not store:
        raise MechscopeError("no activations given: pass {site: [n, d]} tensors")
    values = labels.tolist() if isinstance(labels, Tensor) else list(labels)
    n = len(values)
    for site, a in store.items():
        if a.dim() != 2 or len(a) != n:
            raise MechscopeError(
                f"activations at '{site}' have shape {tuple(a.shape)} but there are {n} labels: give [n, d] "
                "activations with one label per row"
            )
        check_finite(a, site)
    classes = class_names(values)
    lookup = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([lookup[str(v)] for v in values], dtype=torch.long)
    rows = torch.arange(n)
    return Labelled(
        model,
        list(store),
        classes,
        y,
        rows.clone() if groups is None else _per_row(groups, n, "groups"),
        rows.clone() if texts is None else _per_row(texts, n, "texts"),
        store,
        rows,
    )


def _per_row(values: Tensor, n: int, what: str) -> Tensor:
    if len(values) != n:
        raise MechscopeError(f"{what} has {len(values)} entries but there are {n} rows: give one per row")
    return torch.as_tensor(values, dtype=torch.long)


def check_finite(a: Tensor, site: str) -> None:
    if not bool(torch.isfinite(a).all()):
        raise MechscopeError(
            f"the activations at '{site}' hold NaN or inf: a probe cannot be fitted on them "
            "(check the model's weights with `mechscope info`, or the inputs)"
        )
