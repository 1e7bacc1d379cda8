"""Steering vectors from contrast pairs: `Contrast` (the fitter, streaming statistics
over batches of pairs) and `contrast(model, pairs, sites)`, which feeds it from a model.

Methods (as steering-vectors / CAA and repeng define them):
- mean_diff: mean of (positive - negative) activations (CAA; steering-vectors' default).
- pca_diff: first principal component of the centred differences (repeng's pca_diff).
- pca_center: first principal component of the pair-centred activations, i.e. of
  +-(positive - negative) / 2, uncentred (repeng's pca_center).
PCA directions have unit norm and point the way of the mean difference (the streamed
statistics keep no per-pair values to vote with, as repeng does).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import MechscopeError
from .pairs import Pair, read_pairs
from .vector import SteeringVector

log = logging.getLogger(__name__)

METHODS = ("mean_diff", "pca_diff", "pca_center")
Read = str | int | Sequence[int]


class Contrast:
    """Streams (positive, negative) activations per site; `vector()` gives the result.

    fit = Contrast(["blocks.2.hook_resid_post"], method="mean_diff")
    fit.update({"blocks.2.hook_resid_post": pos}, {"blocks.2.hook_resid_post": neg})
    v = fit.vector(model_name="zoo:pycode")
    """

    def __init__(self, sites: Sequence[str], *, method: str = "mean_diff", read: Read = "last"):
        if method not in METHODS:
            raise MechscopeError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.sites, self.method, self.read = list(sites), method, read
        self.n = 0
        self.diff_sum: dict[str, Tensor] = {}
        self.second: dict[str, Tensor] = {}  # sum of outer products of the differences (PCA methods)
        self.norm_sum: dict[str, float] = {s: 0.0 for s in self.sites}

    def update(
        self, positive: dict[str, Float[Tensor, "n d_model"]], negative: dict[str, Float[Tensor, "n d_model"]]
    ) -> Contrast:
        for site in self.sites:
            pos, neg = positive[site].double(), negative[site].double()
            if pos.shape != neg.shape:
                raise MechscopeError(f"positive and negative activations at {site} differ in shape")
            diff = pos - neg
            self.diff_sum[site] = self.diff_sum.get(site, 0) + diff.sum(0)
            if self.method != "mean_diff":
                self.second[site] = self.second.get(site, 0) + diff.T @ diff
            self.norm_sum[site] += float(pos.norm(dim=-1).sum() + neg.norm(dim=-1).sum())
        self.n += len(next(iter(positive.values())))
        return self

    def direction(self, site: str) -> Float[Tensor, " d_model"]:
        mean = self.diff_sum[site] / self.n
        if self.method == "mean_diff":
            return mean.float()
        moment = self.second[site] / self.n
        # pca_diff centres the differences; pca_center's +-diff/2 set has mean 0 already
        cov = moment - torch.outer(mean, mean) if self.method == "pca_diff" else moment / 4
        top = torch.linalg.eigh(cov).eigenvectors[:, -1]
        return (top if float(top @ mean) >= 0 else -top).float()

    def vector(self, model_name: str = "") -> SteeringVector:
        if self.n == 0:
            raise MechscopeError("no pairs were seen: call update() with activations first")
        return SteeringVector(
            {s: self.direction(s) for s in self.sites},
            {s: self.norm_sum[s] / (2 * self.n) for s in self.sites},
            self.method,
            model_name,
            self.n,
            self.read if isinstance(self.read, str) else ",".join(map(str, _positions(self.read))),
        )


def _positions(read: Read) -> list[int]:
    return [read] if isinstance(read, int) else list(read)  # type: ignore[arg-type]


def check_sites(model, sites: str | Sequence[str]) -> list[str]:
    """Site names (globs allowed) whose activations are [batch, pos, d_model]."""
    names = model.table.resolve(sites)
    for name in names:
        site = model.table[name]
        if site.dims != ("batch", "pos", "d_model"):
            raise MechscopeError(
                f"site '{name}' has dims {site.dims}: steering vectors live at [batch, pos, d_model] sites "
                "such as blocks.L.hook_resid_post"
            )
    return names


def read_activations(model, texts: list[str], sites: list[str], read: Read) -> dict[str, Tensor]:
    """[n, d_model] per site: the activation at the last token, the mean over real tokens,
    or the mean over the given positions (negative from each text's end)."""
    if read == "last":
        run = model.run(texts, record=sites, positions=-1, logits=False)
        return {s: run.cache[s][:, 0].float() for s in sites}
    if read == "mean":
        run = model.run(texts, record=sites, logits=False)
        mask = run.mask[..., None].float()
        return {s: (run.cache[s].float() * mask).sum(1) / mask.sum(1) for s in sites}
    if isinstance(read, str):
        raise MechscopeError(f"read must be 'last', 'mean' or positions (ints), got {read!r}")
    run = model.run(texts, record=sites, positions=_positions(read), logits=False)
    return {s: run.cache[s].float().mean(1) for s in sites}


def _check_alignment(model, batch: list[Pair], start: int, read: Read) -> None:
    """Explicit positions must read the same place in both texts of a pair."""
    if isinstance(read, str):
        return
    pos = model.tokenize([p for p, _ in batch])["attention_mask"].sum(1)
    neg = model.tokenize([n for _, n in batch])["attention_mask"].sum(1)
    for i, (a, b) in enumerate(zip(pos.tolist(), neg.tolist())):
        if a != b:
            raise MechscopeError(
                f"pair {start + i}: the positive text has {a} tokens and the negative {b}, so positions "
                f"{_positions(read)} read different places in them: make both the same length in tokens "
                "or use read='last' / 'mean'"
            )


@torch.no_grad()
def contrast(
    model,
    pairs: str | Iterable[Pair],
    sites: str | Sequence[str] = "blocks.*.hook_resid_post",
    *,
    read: Read = "last",
    method: str = "mean_diff",
    batch_size: int = 16,
    progress: bool = True,
) -> SteeringVector:
    """A steering vector from (positive, negative) pairs (texts or a .csv/.jsonl/.json file),
    streamed through the model in batches of `batch_size` pairs.

        v = contrast(model, [("I love it", "I hate it"), ...], "blocks.2.hook_resid_post")
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise MechscopeError(f"batch_size must be at least 1, got {batch_size}")
    names = check_sites(model, sites)
    pairs = read_pairs(pairs)
    fit = Contrast(names, method=method, read=read)
    for start in range(0, len(pairs), 256):  # every pair checked before any work
        _check_alignment(model, pairs[start : start + 256], start, read)
    for start in tqdm(range(0, len(pairs), batch_size), desc="steering pairs", unit="batch", disable=not progress):
        batch = pairs[start : start + batch_size]
        fit.update(
            read_activations(model, [p for p, _ in batch], names, read),
            read_activations(model, [n for _, n in batch], names, read),
        )
    log.info("steering vector from %d pairs at %s (%s)", len(pairs), ", ".join(names), method)
    config = getattr(model.hf, "config", None)
    return dataclasses.replace(
        fit.vector(model_name=model.name), meta={"model_type": getattr(config, "model_type", "")}
    )
