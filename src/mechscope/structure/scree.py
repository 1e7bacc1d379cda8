"""Scree plots and their elbow, by the profile likelihood of Zhu & Ghodsi (2006).

Zhu, M. and Ghodsi, A. (2006), "Automatic dimensionality selection from the scree plot
via the use of profile likelihood", Computational Statistics & Data Analysis 51(2).

Sorted values d_1, ..., d_p are split after position q into a "signal" group d_1..d_q
and a "rest" group d_{q+1}..d_p. Each group is modelled as Gaussian with its own mean
and a variance common to both (pooled, divided by p - 2 as in the paper). The elbow is
the q (1 <= q < p) that maximises the log-likelihood of all p values under that model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import MechscopeError
from ._common import figure, load_json, save_json


def profile_likelihood(values) -> np.ndarray:
    """Log-likelihood of every split q = 1..p-1 of `values`, in the order given."""
    d = np.asarray(values, dtype=float).ravel()
    p = len(d)
    if p < 3:
        raise MechscopeError(f"the profile-likelihood elbow needs at least 3 values, got {p}")
    if not np.all(np.isfinite(d)):
        raise MechscopeError("the profile-likelihood elbow needs finite values (got NaN or inf)")
    q = np.arange(1, p)
    csum, csq = np.cumsum(d), np.cumsum(d * d)
    n1, n2 = q, p - q
    s1, s2 = csum[q - 1], csum[-1] - csum[q - 1]
    ss1 = csq[q - 1] - s1 * s1 / n1  # within-group sums of squares
    ss2 = (csq[-1] - csq[q - 1]) - s2 * s2 / n2
    floor = max((1e-12 * float(np.abs(d).max())) ** 2, 1e-300)  # a perfect split must not divide by zero
    var = np.maximum((ss1 + ss2) / (p - 2), floor)
    # sum of log N(d_i; mean_group, var) = -p/2 log(2 pi var) - (ss1 + ss2) / (2 var)
    return -0.5 * p * np.log(2 * math.pi * var) - (ss1 + ss2) / (2 * var)


def elbow(values) -> int:
    """The profile-likelihood elbow of `values`: how many leading values form the first
    group (1 <= q < p). Pass singular values in decreasing order (a Laplacian's
    eigenvalues in increasing order, to count its near-zero ones)."""
    return int(np.argmax(profile_likelihood(values))) + 1


@dataclass
class Scree:
    """Sorted values (singular values, or eigenvalues) with their profile-likelihood elbow."""

    values: list[float]
    kind: str
    """What the values are, e.g. 'singular values of the attention matrix'."""
    elbow: int
    """How many leading values form the first group (the estimated dimension)."""
    loglik: list[float]
    """Profile log-likelihood of each split q = 1..p-1."""
    label: str = ""

    @classmethod
    def of(cls, values, kind: str, label: str = "") -> "Scree":
        v = np.asarray(values, dtype=float).ravel()
        if len(v) < 3:
            return cls(v.tolist(), kind, len(v), [], label)
        ll = profile_likelihood(v)
        return cls(v.tolist(), kind, int(np.argmax(ll)) + 1, ll.tolist(), label)

    def plot(self):
        """The scree with its elbow marked, and the profile likelihood."""
        fig, axes = figure(8, 3.2, 1, 2)
        ax, ax2 = axes[0]
        x = np.arange(1, len(self.values) + 1)
        ax.plot(x, self.values, marker="o", ms=3)
        if self.loglik:
            ax.axvline(self.elbow + 0.5, color="C3", linestyle="--", label=f"elbow: {self.elbow}")
            ax.legend(fontsize=8)
            ax2.plot(np.arange(1, len(self.loglik) + 1), self.loglik, marker=".", color="C2")
            ax2.axvline(self.elbow, color="C3", linestyle="--")
        ax.set_xlabel("index")
        ax.set_ylabel(self.kind, fontsize=8)
        ax.set_title(f"scree {self.label}".strip(), fontsize=10)
        ax2.set_xlabel("split q")
        ax2.set_ylabel("profile log-likelihood")
        return fig

    def save(self, path):
        return save_json(path, {"kind_of_result": "scree", **vars(self)})

    @classmethod
    def load(cls, path) -> "Scree":
        data = load_json(path)
        data.pop("kind_of_result", None)
        return cls(**data)
