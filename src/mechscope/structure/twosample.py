"""A permutation test of whether two samples of graphs come from the same distribution.

Each graph is summarised by its statistic vector (`graph_stats.STAT_NAMES`). Features
are standardised with the pooled mean and std (unchanged by relabelling, so the test
stays exact); features that are NaN for some graph or constant are left out. The test
statistic is the energy distance between the two samples (Székely & Rizzo 2004), which
is zero only when the two distributions agree, so the test has power against any
difference in the statistics' joint distribution, not only in their means.

Null hypothesis: within each stratum the labels "a" and "b" are exchangeable — the two
heads' (or layers') graphs are draws from one distribution. Without strata every
relabelling of the pooled sample is allowed; with strata (e.g. the prompt each graph
came from: two heads seen on the same prompts are paired) labels are only shuffled
inside a stratum, so the prompt's own effect cancels. The p-value is the Monte-Carlo
permutation p-value (1 + #{T_perm >= T_obs}) / (1 + n_permutations), whose level is
exact: under the null, P(p <= alpha) <= alpha for every alpha.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import MechscopeError
from ._common import figure, load_json, save_json


def _energy(distance: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Energy distance for each row of boolean `labels` [perm, n] (True = sample a)."""
    a = labels.astype(float)
    b = 1.0 - a
    n_a, n_b = a.sum(1), b.sum(1)
    da = a @ distance
    cross = (da * b).sum(1) / (n_a * n_b)
    within_a = (da * a).sum(1) / (n_a * n_a)
    within_b = ((b @ distance) * b).sum(1) / (n_b * n_b)
    return 2 * cross - within_a - within_b


def _permutations(labels: np.ndarray, strata: np.ndarray, n: int, rng) -> np.ndarray:
    out = np.repeat(labels[None], n, axis=0)
    for s in np.unique(strata):
        where = np.flatnonzero(strata == s)
        keys = rng.random((n, len(where)))
        out[:, where] = labels[where][np.argsort(keys, axis=1)]
    return out


@dataclass
class TwoSampleTest:
    """Result of `two_sample_test`: the energy statistic, its permutation p-value and null."""

    statistic: float
    p_value: float
    alpha: float
    n_a: int
    n_b: int
    n_permutations: int
    stratified: bool
    features: list[str]
    seed: int
    null: list[float] = field(default_factory=list, repr=False)
    label_a: str = "a"
    label_b: str = "b"

    @property
    def reject(self) -> bool:
        """True when the null (same distribution) is rejected at level `alpha`."""
        return self.p_value <= self.alpha

    def to_records(self) -> list[dict]:
        keys = ("statistic", "p_value", "alpha", "n_a", "n_b", "n_permutations", "stratified", "label_a", "label_b")
        return [{**{k: getattr(self, k) for k in keys}, "reject": self.reject}]

    def plot(self):
        """The permutation null distribution with the observed statistic."""
        fig, axes = figure(5, 3)
        ax = axes[0, 0]
        ax.hist(self.null, bins=30, color="grey", alpha=0.7, label="permutation null")
        ax.axvline(self.statistic, color="C3", label=f"observed (p = {self.p_value:.3g})")
        ax.set_xlabel("energy distance")
        ax.set_title(f"{self.label_a} vs {self.label_b}", fontsize=10)
        ax.legend(fontsize=8)
        return fig

    def save(self, path):
        return save_json(path, {"kind": "two_sample_test", **vars(self)})

    @classmethod
    def load(cls, path) -> "TwoSampleTest":
        data = load_json(path)
        data.pop("kind", None)
        return cls(**data)


def _standardise(x: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Pooled z-scores of the features that are finite for every graph and not constant."""
    finite = np.all(np.isfinite(x), axis=0)
    x, names = x[:, finite], [n for n, f in zip(names, finite) if f]
    mean, std = x.mean(0), x.std(0)
    keep = std > 1e-12 * np.maximum(1.0, np.abs(mean))
    if not keep.any():
        raise MechscopeError(
            "no usable statistic: every feature is NaN for some graph or constant across all graphs; "
            "lower the threshold or use longer prompts"
        )
    return (x[:, keep] - mean[keep]) / std[keep], [n for n, k in zip(names, keep) if k]


def two_sample_test(
    x_a,
    x_b,
    *,
    strata_a=None,
    strata_b=None,
    names=None,
    n_permutations: int = 999,
    alpha: float = 0.05,
    seed: int = 0,
    label_a: str = "a",
    label_b: str = "b",
) -> TwoSampleTest:
    """Permutation test (energy distance) that the rows of `x_a` [n_a, k] and `x_b` [n_b, k]
    come from one distribution; `strata_*` (one id per row) restrict shuffles to a stratum."""
    x_a, x_b = np.atleast_2d(np.asarray(x_a, float)), np.atleast_2d(np.asarray(x_b, float))
    if x_a.shape[1] != x_b.shape[1]:
        raise MechscopeError(f"the two samples have {x_a.shape[1]} and {x_b.shape[1]} features; they must match")
    if min(len(x_a), len(x_b)) < 1 or len(x_a) + len(x_b) < 3:
        raise MechscopeError(
            f"a two-sample test needs at least 3 graphs in all (got {len(x_a)} and {len(x_b)}); use more prompts"
        )
    if (strata_a is None) != (strata_b is None):
        raise MechscopeError("give strata for both samples or for neither")
    names = list(names) if names is not None else [f"x{i}" for i in range(x_a.shape[1])]
    z, used = _standardise(np.vstack([x_a, x_b]), names)
    labels = np.r_[np.ones(len(x_a), bool), np.zeros(len(x_b), bool)]
    strata = np.zeros(len(labels), int) if strata_a is None else np.r_[np.asarray(strata_a), np.asarray(strata_b)]
    distance = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))
    observed = float(_energy(distance, labels[None])[0])
    rng = np.random.default_rng(seed)
    null = _energy(distance, _permutations(labels, strata, n_permutations, rng))
    p_value = float((1 + np.sum(null >= observed - 1e-12 * max(abs(observed), 1.0))) / (1 + n_permutations))
    return TwoSampleTest(
        observed,
        p_value,
        alpha,
        len(x_a),
        len(x_b),
        n_permutations,
        strata_a is not None,
        used,
        seed,
        null.tolist(),
        label_a,
        label_b,
    )
