"""LEACE concept erasure (Belrose et al. 2023) inside the model, fitted with EleutherAI's
`concept-erasure` package (`LeaceFitter`, streaming `update`).

    eraser = fit_eraser(model, texts, python_token_kinds, "blocks.1.hook_resid_post")
    with model.edit(*eraser.edits()):
        model.run(...) / model.generate(...)       # the concept is gone from those sites
    eraser.save("out/eraser"); Eraser.load("out/eraser").check(model)

Several sites are fitted in forward order, each on activations already erased at the sites
before it (the package's `scrub` recipes do the same), so the edits compose as fitted.
`method="orth"` gives the package's orthogonal-projection variant. (Its quadratic eraser
needs the label at apply time, so it cannot act as a label-free edit and is not offered.)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import edits as edit_ops
from ..errors import MechscopeError
from ..io import read_json, read_tensors, write_json, write_tensors
from .collect import Prepared, prepare
from .labelled import Labelled, check_finite
from .labels import Labeller
from .saving import save_folder

log = logging.getLogger(__name__)
METHODS = ("leace", "orth")


@dataclass(frozen=True)
class Eraser:
    """Frozen erasers, one per site: x -> x - ((x - bias) @ right.T) @ left.T (the package's
    `LeaceEraser`); applied in the model with `edits()`."""

    model: str
    classes: tuple[str, ...]
    method: str
    parts: dict[str, dict[str, Tensor]]
    """site -> {proj_left [d, k], proj_right [k, d], bias [d]}."""

    @property
    def sites(self) -> list[str]:
        return list(self.parts)

    def __call__(self, site: str, x: Tensor) -> Tensor:
        """Erase the concept from activations [..., d] of `site` (computed in x's dtype)."""
        if site not in self.parts:
            raise MechscopeError(f"this eraser has no part for '{site}' (it erases at: {', '.join(self.sites)})")
        p = {k: v.to(device=x.device, dtype=x.dtype) for k, v in self.parts[site].items()}
        d = p["bias"].shape[0]
        if x.shape[-1] != d:
            raise MechscopeError(f"the eraser at {site} reads width {d}, got activations of width {x.shape[-1]}")
        flat = x.reshape(-1, d)
        out = flat - ((flat - p["bias"]) @ p["proj_right"].mH) @ p["proj_left"].mH
        return out.reshape(x.shape)

    def edits(self) -> list[edit_ops.Edit]:
        """One `replace` edit per site: pass to model.run/generate(edits=) or model.edit(*...)."""
        return [edit_ops.replace(site, functools.partial(self, site)) for site in self.parts]

    def check(self, model) -> None:
        """Refuse a model other than the one this eraser was fitted on (name or widths)."""
        if self.model and model.name != self.model:
            raise MechscopeError(f"this eraser was fitted on {self.model}, not {model.name}: fit one for this model")
        for site, p in self.parts.items():
            width = int(torch.Size(model.table[site].sizes[2:]).numel())
            if width != p["bias"].shape[0]:
                raise MechscopeError(f"the eraser at {site} reads width {p['bias'].shape[0]} but the site has {width}")

    def save(self, path: str | Path) -> Path:
        """A folder: cfg.json + eraser.safetensors (written whole)."""
        return save_folder(path, self._write)

    def _write(self, path: Path) -> None:
        tensors = {f"{i}.{k}": v for i, p in enumerate(self.parts.values()) for k, v in p.items()}
        write_tensors(path / "eraser.safetensors", tensors)
        cfg = {"type": "eraser", "model": self.model, "method": self.method, "classes": list(self.classes)}
        write_json(path / "cfg.json", {**cfg, "sites": self.sites})

    @classmethod
    def load(cls, path: str | Path) -> Eraser:
        path = Path(path)
        if not (path / "cfg.json").is_file():
            raise MechscopeError(f"no eraser at '{path}': expected a folder with cfg.json and eraser.safetensors")
        cfg = read_json(path / "cfg.json")
        if cfg.get("type") != "eraser":
            raise MechscopeError(f"'{path}' does not hold an eraser (its cfg.json says {cfg.get('type')!r})")
        t = read_tensors(path / "eraser.safetensors", what="eraser")
        names = ("proj_left", "proj_right", "bias")
        parts = {site: {k: t[f"{i}.{k}"] for k in names} for i, site in enumerate(cfg["sites"])}
        return cls(cfg["model"], tuple(cfg["classes"]), cfg["method"], parts)


def _fitter(d: int, k: int, method: str, **options):
    from concept_erasure import LeaceFitter

    if method not in METHODS:
        raise MechscopeError(f"erasure method must be one of {', '.join(METHODS)}, got {method!r}")
    return LeaceFitter(d, k, method=method, dtype=torch.float64, **options)


def _part(fitter) -> dict[str, Tensor]:
    e = fitter.eraser
    bias = e.bias if e.bias is not None else torch.zeros(e.proj_left.shape[0], dtype=e.proj_left.dtype)
    return {"proj_left": e.proj_left, "proj_right": e.proj_right, "bias": bias}


def _check_classes(counts: Tensor, classes: tuple[str, ...]) -> None:
    if int((counts > 0).sum()) < 2:
        raise MechscopeError(f"every row has the same label ({classes[int(counts.argmax())]!r}): nothing to erase")


def fit_on(data: Labelled, site: str | None = None, *, method: str = "leace", batch: int = 4096, **options) -> Eraser:
    """An eraser for activations you already have (`Labelled`), streamed in batches into one
    `LeaceFitter` (float64 statistics); `options` go to the fitter (shrinkage=, svd_tol=, ...)."""
    site = site or data.sites[0]
    _check_classes(torch.bincount(data.labels, minlength=len(data.classes)), data.classes)
    fitter = _fitter(data.width(site), len(data.classes), method, **options)
    for i in range(0, len(data), batch):
        index = torch.arange(i, min(i + batch, len(data)))
        x = data.x(site, index)
        check_finite(x, site)
        fitter.update(x.double(), F.one_hot(data.labels[index], len(data.classes)).double())
    return Eraser(data.model, data.classes, method, {site: _part(fitter)})


def fit_eraser(
    model,
    texts: Sequence[str],
    labels: Labeller | Sequence,
    sites: str | Sequence[str],
    *,
    positions: int | Sequence[int] | None = None,
    method: str = "leace",
    batch_size: int = 16,
    progress: bool = False,
    **options,
) -> Eraser:
    """Fit erasers at `sites` in forward order, each on activations erased upstream."""
    from ..dictionary.source import resolve_sites

    names = resolve_sites(model, sites)
    prep = prepare(model, texts, labels, positions)
    _check_classes(torch.bincount(prep.labels[prep.labels >= 0], minlength=len(prep.classes)), prep.classes)
    parts: dict[str, dict[str, Tensor]] = {}
    for site in names:
        upstream = Eraser(model.name, prep.classes, method, dict(parts))
        fitter = _stream(model, site, prep, upstream.edits(), method, batch_size, progress, **options)
        parts[site] = _part(fitter)
        log.info("fitted the eraser at %s on %d rows", site, int(fitter.n))
    return Eraser(model.name, prep.classes, method, parts)


def _stream(model, site: str, prep: Prepared, upstream, method: str, batch_size: int, progress: bool, **options):
    from tqdm.auto import tqdm

    k = len(prep.classes)
    fitter = None
    for i in tqdm(range(0, len(prep.tokens), batch_size), desc=f"fitting {site}", disable=not progress):
        rows = slice(i, i + batch_size)
        run = model.run(prep.tokens[rows], attention_mask=prep.mask[rows], record=site, edits=upstream, logits=False)
        x = run.cache[site].flatten(2)
        keep = prep.labels[rows][:, : x.shape[1]] >= 0
        x = x[keep.to(x.device)].double().cpu()
        check_finite(x, site)
        fitter = fitter or _fitter(x.shape[-1], k, method, **options)
        fitter.update(x, F.one_hot(prep.labels[rows][:, : keep.shape[1]][keep], k).double())
    return fitter
