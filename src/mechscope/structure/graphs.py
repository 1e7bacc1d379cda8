"""Attention patterns as graphs.

For a head (layer, head) and a prompt, the attention pattern is a weighted directed graph
on the prompt's tokens: edge q -> k with weight pattern[q, k] (query q reads key k);
padding is removed. Thresholding keeps the edges with weight > `threshold` and drops
self-loops; `graph_stats` compares that graph with an Erdős–Rényi baseline, `embedding`
gives its spectra, spectral embedding and communities, and `twosample` tests whether
two heads' (or layers') graphs come from one distribution.

    graphs = attention_graphs(model, prompts, heads=[(0, 1), (1, 3)], threshold=0.1)
    graphs.get(0, 1).stats().to_records()
    graphs.compare((0, 1), (1, 3)).p_value
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import networkx as nx
import numpy as np
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor

from ..errors import MechscopeError
from ..io import write_tensors
from ..plots import visible
from ._common import figure, frame, load_json, save_json
from .embedding import Communities, Embedding, adjacency_spectrum, communities, laplacian_spectrum, spectral_embedding
from .graph_stats import STAT_NAMES, GraphStats, compare_with_er, graph_statistics
from .scree import Scree
from .twosample import TwoSampleTest, two_sample_test

log = logging.getLogger(__name__)
Head = tuple[int, int]


@dataclass
class HeadGraph:
    """One head's attention on one prompt, as a weighted directed graph."""

    layer: int
    head: int
    prompt: int
    """Index of the prompt in the batch the graph came from."""
    tokens: list[str]
    weights: Float[Tensor, "q_pos k_pos"]
    """Attention of query q to key k, real tokens only."""
    threshold: float = 0.1
    offset: int = 0
    """Position in the prompt of the first token kept: > 0 when the graph is a window of
    the prompt's last tokens (the subgraph they induce; attention to earlier keys left out)."""
    _communities: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"L{self.layer}.H{self.head} prompt {self.prompt}"

    def adjacency(self, threshold: float | None = None) -> np.ndarray:
        """Boolean [q_pos, k_pos]: weight > threshold, self-loops removed."""
        a = self.weights.float().numpy() > (self.threshold if threshold is None else threshold)
        np.fill_diagonal(a, False)
        return a

    def to_networkx(self, threshold: float | None = None) -> nx.DiGraph:
        """Thresholded DiGraph on positions 0..n-1 (node attribute `token`, edge `weight`)."""
        w = self.weights.float().numpy()
        graph = nx.DiGraph()
        graph.add_nodes_from((i, {"token": t}) for i, t in enumerate(self.tokens))
        q, k = np.nonzero(self.adjacency(threshold))
        graph.add_weighted_edges_from((int(a), int(b), float(w[a, b])) for a, b in zip(q, k))
        return graph

    def statistics(self) -> dict[str, float]:
        """The statistics of `graph_stats.STAT_NAMES` of the thresholded graph."""
        return graph_statistics(self.adjacency())

    def stats(self, *, n_null: int = 100, seed: int = 0) -> GraphStats:
        """Statistics against directed G(n, p) of equal density (expected and sampled)."""
        return compare_with_er(self.adjacency(), label=self.label, n_null=n_null, seed=seed)

    def spectrum(self, kind: str = "adjacency") -> Scree:
        """'adjacency': singular values of the weights; 'laplacian': normalised-Laplacian
        eigenvalues of the symmetrised weights. Both with their profile-likelihood elbow."""
        if kind not in ("adjacency", "laplacian"):
            raise MechscopeError(f"unknown spectrum kind {kind!r}: use 'adjacency' or 'laplacian'")
        make = adjacency_spectrum if kind == "adjacency" else laplacian_spectrum
        return make(self.weights.double().numpy(), self.label)

    def embedding(self, dim: int = 2, *, seed: int = 0) -> Embedding:
        result = spectral_embedding(self.weights.double().numpy(), self.tokens, dim=dim, seed=seed, label=self.label)
        result.communities = self.communities(seed=seed).labels
        return result

    def communities(self, *, resolution: float = 1.0, seed: int = 0) -> Communities:
        """Louvain communities (computed once per resolution and seed: `summary` and
        `plot` both ask)."""
        key = (resolution, seed)
        if key not in self._communities:
            self._communities[key] = communities(
                self.weights.double().numpy(), self.tokens, resolution=resolution, seed=seed
            )
        return self._communities[key]

    def window(self, n: int) -> "HeadGraph":
        """The subgraph induced by the last `n` tokens (itself when it has no more)."""
        if n < 1:
            raise MechscopeError(f"a window needs at least 1 token, got {n}")
        if n >= len(self.tokens):
            return self
        start = len(self.tokens) - n
        return HeadGraph(
            self.layer,
            self.head,
            self.prompt,
            self.tokens[start:],
            self.weights[start:, start:].clone(),
            self.threshold,
            self.offset + start,
        )

    def plot(self, *, ax=None, color_communities: bool = True):
        """Arc diagram on the tokens: edges above the threshold, backward edges (k < q)
        above the line, forward ones below; width and opacity grow with the weight."""
        if ax is None:
            fig, axes = figure(max(5.0, 0.3 * len(self.tokens)), 3.4)
            ax = axes[0, 0]
        colors = self.communities().labels if color_communities and len(self.tokens) > 1 else None
        draw_arcs(ax, self.weights.float().numpy(), self.tokens, self.threshold, colors)
        where = f", positions {self.offset}-{self.offset + len(self.tokens) - 1}" if self.offset else ""
        ax.set_title(f"{self.label} (edges > {self.threshold:g}{where})", fontsize=10)
        return ax.figure


def draw_arcs(ax, weights: np.ndarray, tokens: list[str], threshold: float, colors=None) -> None:
    from matplotlib.patches import Arc

    n = len(tokens)
    q, k = np.nonzero(weights > threshold)
    tallest = 0.0
    for a, b in zip(q, k):
        if a == b:
            continue
        w, span = float(weights[a, b]), abs(int(a) - int(b))
        angles = (0, 180) if b < a else (180, 360)
        ax.add_patch(
            Arc(
                ((a + b) / 2, 0),
                span,
                span,
                theta1=angles[0],
                theta2=angles[1],
                linewidth=0.4 + 2.5 * w,
                alpha=min(1.0, 0.25 + w),
                color="C0" if b < a else "C1",
            )
        )
        tallest = max(tallest, span / 2)
    received = weights.sum(0)
    ax.scatter(
        range(n),
        np.zeros(n),
        s=15 + 60 * received / max(received.max(), 1e-9),
        zorder=3,
        c=colors if colors is not None else "k",
        cmap="tab10",
    )
    ax.set_xticks(range(n), [visible(t, 10) for t in tokens], rotation=90, fontsize=7)
    ax.set_xlabel(
        "token (arc above: attention to an earlier token; dot size: attention received; colour: community)", fontsize=8
    )
    ax.set_yticks([])
    ax.set_xlim(-1, n)
    ax.set_ylim(-tallest - 0.5 if (k > q).any() else -0.5, tallest + 0.5)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)


def parse_heads(heads, dims) -> list[Head]:
    """Heads as (layer, head) pairs from None (all), "L.H,L.H", or a sequence of pairs / "L.H"."""
    if heads is None:
        return [(layer, h) for layer in range(dims.n_layers) for h in range(dims.n_heads)]
    items = heads.split(",") if isinstance(heads, str) else list(heads)
    if not items:
        raise MechscopeError("no heads given: pass heads as 'layer.head' pairs, e.g. 0.1,2.3")
    out = []
    for item in items:
        try:
            layer, head = (int(x) for x in item.strip().split(".")) if isinstance(item, str) else map(int, item)
        except (TypeError, ValueError):
            raise MechscopeError(f"bad head {item!r}: write heads as 'layer.head', e.g. 0.1") from None
        if not (0 <= layer < dims.n_layers and 0 <= head < dims.n_heads):
            raise MechscopeError(
                f"unknown head {layer}.{head}: this model has {dims.n_layers} layers "
                f"(0-{dims.n_layers - 1}) of {dims.n_heads} heads (0-{dims.n_heads - 1})"
            )
        out.append((layer, head))
    return list(dict.fromkeys(out))


@dataclass
class AttentionGraphs:
    """Attention graphs of several heads on several prompts (see `attention_graphs`)."""

    graphs: list[HeadGraph]
    threshold: float
    model: str = ""
    n_prompts: int = field(default=0)

    @property
    def heads(self) -> list[Head]:
        return list(dict.fromkeys((g.layer, g.head) for g in self.graphs))

    def select(self, layer: int | None = None, head: int | None = None) -> list[HeadGraph]:
        return [g for g in self.graphs if (layer is None or g.layer == layer) and (head is None or g.head == head)]

    def get(self, layer: int, head: int, prompt: int = 0) -> HeadGraph:
        for g in self.graphs:
            if (g.layer, g.head, g.prompt) == (layer, head, prompt):
                return g
        raise MechscopeError(
            f"no graph for head {layer}.{head} on prompt {prompt}: these graphs hold heads "
            f"{', '.join(f'{a}.{b}' for a, b in self.heads)} on {self.n_prompts} prompt(s)"
        )

    def stats(self, *, n_null: int = 100, seed: int = 0) -> list[GraphStats]:
        return [g.stats(n_null=n_null, seed=seed) for g in self.graphs]

    def summary(self, *, n_null: int = 50, seed: int = 0) -> list[dict]:
        """One row per graph: statistics with z-scores against the sampled ER null, the
        scree elbows and the Louvain communities."""
        rows = []
        for g in self.graphs:
            s = g.stats(n_null=n_null, seed=seed)
            parts = g.communities(seed=seed)
            row: dict[str, object] = {
                "layer": g.layer,
                "head": g.head,
                "prompt": g.prompt,
                "n_nodes": s.n_nodes,
                "n_edges": s.n_edges,
            }
            for name in STAT_NAMES:
                row[name], row[f"{name}_z"] = s.observed[name], s.z(name)
            row.update(
                elbow=g.spectrum().elbow,
                laplacian_elbow=g.spectrum("laplacian").elbow,
                communities=len(parts.groups),
                modularity=parts.modularity,
            )
            rows.append(row)
        return rows

    def to_records(self, *, n_null: int = 50, seed: int = 0) -> list[dict]:
        return self.summary(n_null=n_null, seed=seed)

    def to_frame(self, *, n_null: int = 50, seed: int = 0):
        return frame(self.summary(n_null=n_null, seed=seed))

    def _sample(self, which) -> list[HeadGraph]:
        if isinstance(which, int):
            chosen = self.select(layer=which)
        else:
            layer, head = (int(x) for x in which.split(".")) if isinstance(which, str) else which
            chosen = self.select(layer, head)
        if not chosen:
            raise MechscopeError(
                f"no graphs for {which!r}: these graphs hold heads {', '.join(f'{a}.{b}' for a, b in self.heads)}"
            )
        return chosen

    def compare(self, a, b, *, n_permutations: int = 999, alpha: float = 0.05, seed: int = 0) -> TwoSampleTest:
        """Permutation test that two heads ((layer, head) or "L.H") or two layers (an int)
        have graphs from one distribution, shuffling labels only within each prompt."""
        ga, gb = self._sample(a), self._sample(b)
        xa = [[g.statistics()[s] for s in STAT_NAMES] for g in ga]
        xb = [[g.statistics()[s] for s in STAT_NAMES] for g in gb]
        return two_sample_test(
            xa,
            xb,
            strata_a=[g.prompt for g in ga],
            strata_b=[g.prompt for g in gb],
            names=STAT_NAMES,
            n_permutations=n_permutations,
            alpha=alpha,
            seed=seed,
            label_a=str(a),
            label_b=str(b),
        )

    def plot(self, heads: Sequence[Head] | None = None, prompt: int = 0):
        """Arc diagrams of some heads (all, up to 12) on one prompt."""
        chosen = list(heads) if heads is not None else self.heads[:12]
        graphs = [self.get(layer, head, prompt) for layer, head in chosen]
        width = max(5.0, 0.3 * len(graphs[0].tokens))
        fig, axes = figure(width, 2.8 * len(graphs), len(graphs), 1)
        for g, ax in zip(graphs, axes[:, 0]):
            g.plot(ax=ax)
        return fig

    def save(self, folder) -> Path:
        """`folder/cfg.json` (heads, tokens, threshold) + `folder/weights.safetensors`."""
        folder = Path(folder)
        cfg = {
            "kind": "attention_graphs",
            "model": self.model,
            "threshold": self.threshold,
            "n_prompts": self.n_prompts,
            "graphs": [
                {"layer": g.layer, "head": g.head, "prompt": g.prompt, "tokens": g.tokens, "offset": g.offset}
                for g in self.graphs
            ],
        }
        write_tensors(
            folder / "weights.safetensors", {f"{g.layer}.{g.head}.{g.prompt}": g.weights for g in self.graphs}
        )
        save_json(folder / "cfg.json", cfg)
        return folder

    @classmethod
    def load(cls, folder) -> "AttentionGraphs":
        folder = Path(folder)
        cfg = load_json(folder / "cfg.json")
        weights = load_file(folder / "weights.safetensors")
        graphs = [
            HeadGraph(
                g["layer"],
                g["head"],
                g["prompt"],
                g["tokens"],
                weights[f"{g['layer']}.{g['head']}.{g['prompt']}"],
                cfg["threshold"],
                g.get("offset", 0),
            )
            for g in cfg["graphs"]
        ]
        return cls(graphs, cfg["threshold"], cfg["model"], cfg["n_prompts"])


def attention_graphs(
    model,
    prompts,
    *,
    heads=None,
    threshold: float = 0.1,
    attention_mask: Tensor | None = None,
    batch_size: int | None = None,
    window: int | None = None,
) -> AttentionGraphs:
    """The attention graphs of `heads` (None: every head; (layer, head) pairs or "L.H,L.H")
    on every prompt, from `blocks.{l}.attn.hook_pattern` with padding removed.

    window: keep only each prompt's last `window` tokens (queries and keys: the subgraph
    they induce, `HeadGraph.offset` says where it starts). When every prompt is at least
    that long only those query rows are recorded, so memory grows with the prompt, not its square."""
    if getattr(model, "dims", None) is None:
        raise MechscopeError(f"{model.name} has no attention heads: attention graphs need a transformer")
    if not 0.0 <= threshold < 1.0:
        raise MechscopeError(f"threshold must be in [0, 1) (an attention weight), got {threshold}")
    if window is not None and window < 2:
        raise MechscopeError(f"window must be 2 tokens or more (a graph needs two nodes), got {window}")
    chosen = parse_heads(heads, model.dims)
    layers = sorted({layer for layer, _ in chosen})
    positions = None
    if window is not None:
        mask = model.tokenize(prompts, attention_mask).get("attention_mask")
        shortest = int(mask.sum(-1).min()) if mask is not None else None
        positions = list(range(-window, 0)) if shortest is not None and shortest >= window else None
    run = model.run(
        prompts,
        record=[f"blocks.{layer}.attn.hook_pattern" for layer in layers],
        logits=False,
        attention_mask=attention_mask,
        batch_size=batch_size,
        cache_device="cpu",
        positions=positions,
    )
    lengths = run.mask.sum(-1).tolist() if run.mask is not None else [run.tokens.shape[1]] * len(run.tokens)
    graphs = []
    for p, n in enumerate(lengths):
        start = n - min(n, window) if window is not None else 0
        rows = slice(None) if positions is not None else slice(start, n)
        tokens = run.str_tokens(p) if run.mask is not None else [str(i) for i in range(n)]
        for layer, head in chosen:
            pattern = run.cache[f"blocks.{layer}.attn.hook_pattern"][p, head, rows, start:n]
            graphs.append(HeadGraph(layer, head, p, tokens[start:], pattern.float().clone(), threshold, start))
    log.info(
        "attention graphs: %d heads x %d prompts%s",
        len(chosen),
        len(lengths),
        f" (last {window} tokens)" if window is not None else "",
    )
    return AttentionGraphs(graphs, threshold, model.name, len(lengths))
