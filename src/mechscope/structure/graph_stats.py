"""Statistics of a thresholded directed graph, against an Erdős–Rényi baseline.

The graph is directed (attention: edge q -> k), has no self-loops (a token attending to
itself is dropped before counting), and is given as a boolean adjacency matrix
`a[i, j]` = edge i -> j. The statistics:

- `density`: edges / (n (n - 1)) (`networkx.density` of the DiGraph).
- `clustering`: mean directed clustering coefficient over all nodes (Fagiolo 2007, as
  `networkx.average_clustering` computes it; nodes with fewer than two neighbours count 0).
  Computed in matrix form (clustering; breadth-first search for paths) so that sampled nulls are
  fast; the tests check both against networkx.
- `mean_path`: mean shortest-path length on the largest *weakly* connected component,
  with edge directions ignored. Causal attention graphs only point backwards, so they
  are acyclic and every strongly connected component is a single token: a directed
  version would be empty. NaN when that component has fewer than two nodes.
- `mean_degree` (= mean in-degree = mean out-degree = edges / n), `in_degree_std`,
  `out_degree_std` (sample std, ddof=1), `in_degree_max`, `out_degree_max`.

Baseline: directed G(n, p) over all n (n - 1) ordered pairs with p = observed density.
For causal models this ignores that edges can only point backwards, so it is a
density-matched reference, not a structural null. Two views of it:

- `expected`: closed forms. Density p; clustering p · P(Bin(n-1, p_u) >= 2) with
  p_u = 1 - (1 - p)^2 (exact: given a node's own edges, Fagiolo's coefficient has mean p);
  degree mean (n-1)p and std sqrt((n-1)p(1-p)) (the root of the expected variance);
  max degree E[max of n independent Bin(n-1, p)] (in-degrees of directed G(n, p) are
  independent, so this is exact); mean path by the mean-field recursion
  S_{d+1} = (n - R_d)(1 - (1 - p_u)^{S_d}) over the undirected skeleton (approximate).
- `null_*`: `n_null` graphs sampled with `seed`, the same statistics on each: mean, std,
  and a two-sided Monte-Carlo p-value (1 + #{|null - mean| >= |obs - mean|}) / (1 + n_null).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from scipy import stats as sps

from ..errors import MechscopeError
from ._common import figure, frame, load_json, save_json

STAT_NAMES = (
    "density",
    "clustering",
    "mean_path",
    "mean_degree",
    "in_degree_std",
    "out_degree_std",
    "in_degree_max",
    "out_degree_max",
)


def as_digraph(adjacency: np.ndarray) -> nx.DiGraph:
    """The networkx DiGraph of a boolean adjacency matrix, self-loops dropped."""
    a = np.array(adjacency, dtype=bool)
    np.fill_diagonal(a, False)
    return nx.from_numpy_array(a.astype(np.int8), create_using=nx.DiGraph)


def directed_clustering(a: np.ndarray) -> np.ndarray:
    """Fagiolo's directed clustering of every node (what `networkx.clustering` gives a
    DiGraph), in matrix form: t_i = (S³)_ii / 2 with S = A + Aᵀ, over
    d_tot (d_tot - 1) - 2 d_bi; 0 where that is 0. The diagonal of S³ comes from one
    matrix product (BLAS) and a row-wise dot (a three-index einsum is an unblocked n³
    loop, ~100x slower at n = 128); the counts are small integers, exact in float64."""
    a = a.astype(float)
    s = a + a.T
    triangles = np.einsum("ij,ji->i", s @ s, s) / 2
    total = s.sum(1)
    denominator = total * (total - 1) - 2 * np.einsum("ij,ji->i", a, a)
    return np.divide(triangles, denominator, out=np.zeros_like(triangles), where=denominator > 0)


def skeleton_distances(a: np.ndarray) -> np.ndarray:
    """All-pairs hop distances of the undirected skeleton of `a` (inf: unreachable), by
    breadth-first search in matrix form."""
    n = len(a)
    neighbours = (a | a.T).astype(np.float32)
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0)
    reached = np.eye(n, dtype=bool)
    frontier = reached.copy()
    for d in range(1, n):
        frontier = ((frontier.astype(np.float32) @ neighbours) > 0) & ~reached
        if not frontier.any():
            break
        dist[frontier] = d
        reached |= frontier
    return dist


def mean_path(a: np.ndarray) -> float:
    """Mean shortest-path length on the largest weakly connected component, undirected
    (what `networkx.average_shortest_path_length` gives that component's skeleton)."""
    if len(a) < 2:
        return math.nan
    dist = skeleton_distances(np.asarray(a, dtype=bool))
    sizes = np.isfinite(dist).sum(1)
    largest = np.flatnonzero(np.isfinite(dist[int(sizes.argmax())]))
    if len(largest) < 2:
        return math.nan
    return float(dist[np.ix_(largest, largest)].sum() / (len(largest) * (len(largest) - 1)))


def graph_statistics(adjacency: np.ndarray) -> dict[str, float]:
    """The statistics of `STAT_NAMES` for one boolean adjacency matrix (a[i, j]: i -> j)."""
    a = np.array(adjacency, dtype=bool)
    np.fill_diagonal(a, False)
    n = len(a)
    if n < 2:
        return {name: math.nan for name in STAT_NAMES}
    indeg, outdeg = a.sum(0).astype(float), a.sum(1).astype(float)
    return {
        "density": float(a.sum() / (n * (n - 1))),
        "clustering": float(directed_clustering(a).mean()),
        "mean_path": mean_path(a),
        "mean_degree": float(outdeg.mean()),
        "in_degree_std": float(indeg.std(ddof=1)),
        "out_degree_std": float(outdeg.std(ddof=1)),
        "in_degree_max": float(indeg.max()),
        "out_degree_max": float(outdeg.max()),
    }


def er_mean_path(n: int, p_undirected: float) -> float:
    """Mean-field expected shortest-path length of G(n, p) between connected pairs."""
    if n < 2 or p_undirected <= 0:
        return math.nan
    frontier, reached, total, weighted = 1.0, 1.0, 0.0, 0.0
    for distance in range(1, n):
        new = (n - reached) * (1.0 - (1.0 - p_undirected) ** frontier)
        if new < 1e-9:
            break
        total, weighted = total + new, weighted + distance * new
        frontier, reached = new, reached + new
    return weighted / total if total > 0 else math.nan


def er_expected(n: int, p: float) -> dict[str, float]:
    """Closed-form (path: mean-field) expectations of the statistics for directed G(n, p)."""
    if n < 2:
        return {name: math.nan for name in STAT_NAMES}
    p_u = 1.0 - (1.0 - p) ** 2
    at_least_two = 1.0 - sps.binom.cdf(1, n - 1, p_u)
    cdf = sps.binom.cdf(np.arange(n), n - 1, p)
    expected_max = float(np.sum(1.0 - cdf[:-1] ** n))  # sum over k >= 1 of P(max >= k)
    std = math.sqrt((n - 1) * p * (1 - p))
    return {
        "density": p,
        "clustering": float(p * at_least_two),
        "mean_path": er_mean_path(n, p_u),
        "mean_degree": (n - 1) * p,
        "in_degree_std": std,
        "out_degree_std": std,
        "in_degree_max": expected_max,
        "out_degree_max": expected_max,
    }


def er_samples(n: int, p: float, n_null: int, seed: int) -> np.ndarray:
    """Statistics of `n_null` directed G(n, p) graphs: [n_null, len(STAT_NAMES)]."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_null):
        found = graph_statistics(rng.random((n, n)) < p)
        rows.append([found[s] for s in STAT_NAMES])
    return np.array(rows, dtype=float).reshape(n_null, len(STAT_NAMES))


def _p_value(null: np.ndarray, observed: float) -> float:
    null = null[~np.isnan(null)]
    if math.isnan(observed) or len(null) == 0:
        return math.nan
    centre = null.mean()
    extreme = np.abs(null - centre) >= abs(observed - centre) - 1e-12
    return float((1 + extreme.sum()) / (1 + len(null)))


@dataclass
class GraphStats:
    """One graph's statistics next to its Erdős–Rényi baseline (see the module docstring)."""

    label: str
    n_nodes: int
    n_edges: int
    observed: dict[str, float]
    expected: dict[str, float]
    null_mean: dict[str, float] = field(default_factory=dict)
    null_std: dict[str, float] = field(default_factory=dict)
    p_value: dict[str, float] = field(default_factory=dict)
    n_null: int = 0
    seed: int = 0

    def z(self, name: str) -> float:
        std = self.null_std.get(name, math.nan)
        return (self.observed[name] - self.null_mean.get(name, math.nan)) / std if std > 0 else math.nan

    def to_records(self) -> list[dict]:
        """One row per statistic."""
        return [
            {
                "graph": self.label,
                "statistic": s,
                "observed": self.observed[s],
                "er_expected": self.expected[s],
                "null_mean": self.null_mean.get(s, math.nan),
                "null_std": self.null_std.get(s, math.nan),
                "z": self.z(s),
                "p_value": self.p_value.get(s, math.nan),
            }
            for s in STAT_NAMES
        ]

    def to_frame(self):
        return frame(self.to_records())

    def plot(self):
        """Observed value against the ER expectation and the sampled null (mean ± 2 std)."""
        fig, axes = figure(9, 3.2)
        ax = axes[0, 0]
        x = np.arange(len(STAT_NAMES))
        scale = np.array([max(abs(self.expected[s]), abs(self.observed[s]), 1e-12) for s in STAT_NAMES])
        scale = np.where(np.isnan(scale), 1.0, scale)
        if self.null_mean:
            mean = np.array([self.null_mean[s] for s in STAT_NAMES]) / scale
            std = np.array([self.null_std[s] for s in STAT_NAMES]) / scale
            ax.errorbar(x, mean, yerr=2 * std, fmt="none", ecolor="grey", capsize=4, label="ER null ±2 std")
        ax.scatter(
            x,
            np.array([self.expected[s] for s in STAT_NAMES]) / scale,
            marker="_",
            s=200,
            color="grey",
            label="ER expected",
        )
        ax.scatter(x, np.array([self.observed[s] for s in STAT_NAMES]) / scale, color="C3", zorder=3, label="observed")
        ax.set_xticks(x, STAT_NAMES, rotation=30, fontsize=8)
        ax.set_ylabel("value / max(|observed|, |expected|)")
        ax.set_title(f"{self.label}: {self.n_nodes} nodes, {self.n_edges} edges", fontsize=10)
        ax.legend(fontsize=8)
        return fig

    def save(self, path):
        return save_json(path, {"kind": "graph_stats", **vars(self)})

    @classmethod
    def load(cls, path) -> "GraphStats":
        data = load_json(path)
        data.pop("kind", None)
        return cls(**data)


def compare_with_er(adjacency: np.ndarray, *, label: str = "graph", n_null: int = 100, seed: int = 0) -> GraphStats:
    """Statistics of one thresholded graph against directed G(n, p) of equal density."""
    if n_null < 0:
        raise MechscopeError(f"n_null must be 0 (no baseline) or more random graphs, got {n_null}")
    a = np.array(adjacency, dtype=bool)
    np.fill_diagonal(a, False)
    n = len(a)
    observed = graph_statistics(a)
    p = observed["density"] if n > 1 else 0.0
    result = GraphStats(label, n, int(a.sum()), observed, er_expected(n, p), n_null=n_null, seed=seed)
    if n_null > 0 and n > 1:
        null = er_samples(n, p, n_null, seed)
        for i, s in enumerate(STAT_NAMES):
            column = null[:, i]
            finite = column[~np.isnan(column)]
            result.null_mean[s] = float(finite.mean()) if len(finite) else math.nan
            result.null_std[s] = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
            result.p_value[s] = _p_value(column, observed[s])
    return result
