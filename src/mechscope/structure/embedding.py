"""Spectral views of one weighted attention graph: spectra, embedding, communities.

These work on the weighted attention matrix `w[q, k]` (not the thresholded one). The
spectral embedding and the communities use its symmetrised form (w + wᵀ) / 2 with the
diagonal removed: attention is directed, but both methods need an undirected graph, and
a strong link in either direction ties two tokens together.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
from scipy.sparse.csgraph import laplacian

from ..errors import MechscopeError
from ._common import figure, load_json, save_json
from .scree import Scree


def symmetrised(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=float)
    s = (w + w.T) / 2
    np.fill_diagonal(s, 0.0)
    return s


def adjacency_spectrum(weights: np.ndarray, label: str = "") -> Scree:
    """Singular values of the (directed) attention matrix, decreasing, with their elbow."""
    values = np.linalg.svd(np.asarray(weights, dtype=float), compute_uv=False)
    return Scree.of(values, "singular values of the attention matrix", label)


def laplacian_spectrum(weights: np.ndarray, label: str = "") -> Scree:
    """Eigenvalues of the normalised Laplacian of the symmetrised graph, increasing; the
    elbow counts the near-zero ones (roughly, how many loosely joined groups there are)."""
    lap = laplacian(symmetrised(weights), normed=True)
    values = np.clip(np.linalg.eigvalsh(lap), 0.0, None)
    return Scree.of(values, "eigenvalues of the normalised Laplacian", label)


@dataclass
class Embedding:
    """Laplacian spectral embedding of the tokens of one attention graph."""

    coords: list[list[float]]
    """[pos, dim]: each token's coordinates."""
    tokens: list[str]
    label: str = ""
    communities: list[int] | None = None

    def plot(self):
        """The first two coordinates, each point labelled with its token."""
        c = np.asarray(self.coords)
        fig, axes = figure(5, 4.5)
        ax = axes[0, 0]
        y = c[:, 1] if c.shape[1] > 1 else np.zeros(len(c))
        ax.scatter(c[:, 0], y, c=self.communities if self.communities else "C0", cmap="tab10", s=25)
        for i, token in enumerate(self.tokens):
            ax.annotate(f"{i}:{token!r}"[:16], (c[i, 0], y[i]), fontsize=7, alpha=0.8)
        ax.set_xlabel("spectral coordinate 1")
        ax.set_ylabel("spectral coordinate 2")
        ax.set_title(f"spectral embedding {self.label}".strip(), fontsize=10)
        return fig

    def save(self, path):
        return save_json(path, {"kind": "embedding", **vars(self)})

    @classmethod
    def load(cls, path) -> "Embedding":
        data = load_json(path)
        data.pop("kind", None)
        return cls(**data)


def spectral_embedding(
    weights: np.ndarray, tokens: list[str], *, dim: int = 2, seed: int = 0, label: str = ""
) -> Embedding:
    """Laplacian eigenmap (scikit-learn `spectral_embedding`, normalised Laplacian, first
    trivial eigenvector dropped) of the symmetrised attention graph."""
    from sklearn.manifold import spectral_embedding as sk_embedding

    n = len(tokens)
    if n < dim + 2:
        raise MechscopeError(
            f"a {dim}-dimensional spectral embedding needs at least {dim + 2} tokens, got {n}; "
            "use a longer prompt or a smaller dim"
        )
    coords = sk_embedding(
        symmetrised(weights), n_components=dim, norm_laplacian=True, drop_first=True, random_state=seed
    )
    return Embedding(coords.tolist(), list(tokens), label)


@dataclass
class Communities:
    """Louvain communities (networkx) of the symmetrised, weighted attention graph."""

    labels: list[int]
    """Community id of each token (0 = the largest community)."""
    modularity: float
    tokens: list[str]
    seed: int = 0

    @property
    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i, c in enumerate(self.labels):
            out.setdefault(c, []).append(i)
        return [out[c] for c in sorted(out)]

    def to_records(self) -> list[dict]:
        return [{"position": i, "token": t, "community": c} for i, (t, c) in enumerate(zip(self.tokens, self.labels))]


def communities(weights: np.ndarray, tokens: list[str], *, resolution: float = 1.0, seed: int = 0) -> Communities:
    """Louvain communities of the symmetrised attention graph, with their modularity."""
    graph = nx.from_numpy_array(symmetrised(weights))
    if graph.number_of_edges() == 0:
        return Communities(list(range(len(tokens))), 0.0, list(tokens), seed)
    parts = nx.community.louvain_communities(graph, weight="weight", resolution=resolution, seed=seed)
    parts = sorted(parts, key=lambda c: (-len(c), min(c)))
    labels = [0] * len(tokens)
    for c, members in enumerate(parts):
        for node in members:
            labels[node] = c
    modularity = nx.community.modularity(graph, parts, weight="weight", resolution=resolution)
    return Communities(labels, float(modularity), list(tokens), seed)
