"""`Circuit`: a set of edges of a model's `Graph`, each with a score.

ACDC returns the edges it kept (score: how much the metric changed when the edge was
tried out); EAP and EAP-IG return *every* edge with its attribution score, and
``.circuit(top=n)`` or ``.circuit(threshold=t)`` cuts a circuit out of them.

Faithfulness is normalised between the full model and the model with every edge
ablated: ``(m_circuit - m_ablated) / (m_full - m_ablated)``, so 1 means the circuit
alone (the rest ablated) does as well as the whole model and 0 as badly as nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from jaxtyping import Float
from safetensors.torch import load_file
from torch import Tensor

from ..errors import MechscopeError
from ..io import write_json, write_tensors
from .graph import Graph, layer_of, node_of

CHANNEL_COLOURS = {"q": "tab:blue", "k": "tab:green", "v": "tab:red", "": "tab:gray"}
CHANNEL_NAMES = {"q": "into a query", "k": "into a key", "v": "into a value", "": "into an MLP or the logits"}
"""What an edge's colour says: which input of its receiver it writes (the drawing's legend)."""


@dataclass
class Circuit:
    """Edges of a model's `Graph`, each with a score (see the module docstring).

    Invariants: every edge is an edge of `graph` (sender computed before its receiver reads
    the stream); `scores` holds one float per edge, in the order of `edges`; saved as a
    folder (cfg.json + safetensors) that `load` reads back unchanged.

        scores = ms.circuits.eap(model, task)               # every edge, scored
        small = scores.circuit(top=50)
        small.faithfulness(model, task), small.to_dot()
    """

    graph: Graph
    """The graph the edges belong to (its shape: layers, heads, KV heads, MLPs)."""
    edges: list[tuple[str, str]]
    """(sender, receiver) pairs, e.g. ("a0.h3", "a1.h1.k")."""
    scores: Float[Tensor, " edge"]
    """One score per edge (method-dependent; larger magnitude = more important)."""
    method: str = ""
    """acdc, eap or eap-ig."""
    metric: str = ""
    """Name of the metric the scores refer to."""
    model: str = ""
    """Name of the model."""
    info: dict = field(default_factory=dict)
    """Settings of the run (threshold, steps, ablation, ...)."""

    def __post_init__(self) -> None:
        self.edges = [cast("tuple[str, str]", tuple(e)) for e in self.edges]  # lists (from JSON) become tuples
        self.scores = torch.as_tensor(self.scores, dtype=torch.float32).reshape(-1)
        if len(self.scores) != len(self.edges):
            raise MechscopeError(
                f"a circuit needs one score per edge: {len(self.edges)} edges, {len(self.scores)} scores"
            )

    def __len__(self) -> int:
        return len(self.edges)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def nodes(self) -> list[str]:
        """Nodes touched by an edge (receivers folded into their head / KV head), in graph order."""
        names = {s for s, _ in self.edges} | {node_of(r) for _, r in self.edges}
        return sorted(names, key=lambda n: (layer_of(n, self.graph.n_layers), n))

    def score(self, sender: str, receiver: str) -> float:
        try:
            return float(self.scores[self.edges.index((sender, receiver))])
        except ValueError:
            raise MechscopeError(f"edge {sender} -> {receiver} is not in this circuit") from None

    def top(self, n: int = 10) -> list[tuple[tuple[str, str], float]]:
        """The n edges with the largest |score|, largest first."""
        order = self.scores.abs().argsort(descending=True)[:n]
        return [(self.edges[i], float(self.scores[i])) for i in order.tolist()]

    def circuit(self, top: int | None = None, threshold: float | None = None) -> "Circuit":
        """The sub-circuit of the `top` edges by |score|, or of those with |score| >= threshold."""
        if (top is None) == (threshold is None):
            raise MechscopeError("give exactly one of top=N (the N highest-|score| edges) or threshold=T")
        if top is not None:
            if top < 1:
                raise MechscopeError(f"top must be at least 1, got {top}")
            keep = self.scores.abs().argsort(descending=True)[:top].sort().values
        else:
            assert threshold is not None  # exactly one of top / threshold (checked above)
            keep = (self.scores.abs() >= threshold).nonzero()[:, 0]
        if len(keep) == 0:
            raise MechscopeError(
                f"no edge has |score| >= {threshold} (largest: {float(self.scores.abs().max()):.4g}); "
                "lower the threshold or use top=N"
            )
        info = {**self.info, **({"top": top} if top is not None else {"threshold": threshold})}
        return Circuit(
            self.graph,
            [self.edges[i] for i in keep.tolist()],
            self.scores[keep],
            self.method,
            self.metric,
            self.model,
            info,
        )

    def faithfulness(self, model, task, metric=None, ablation: str = "corrupt") -> float:
        """(m_circuit - m_ablated) / (m_full - m_ablated), the rest of the graph ablated with
        `ablation` (corrupt, mean or zero). `metric`: a Metric, a name, or None for the
        task's logit difference (answer logit without foils)."""
        from .discovery import resolve_metric
        from .edges import EdgePatcher

        patcher = EdgePatcher(model, self.graph)
        _, ablated = patcher.ablated_values(task, ablation)
        with torch.no_grad():
            full = model.run(task.clean, attention_mask=task.mask).logits
            m = resolve_metric(metric, task, full, default="task")
            allowed = self.graph.allowed
            m_full = float(m(full))
            m_none = float(m(patcher.run(task.clean, ablated, allowed, mask=task.mask)))
            kept = self.graph.mask_of(self.edges)
            m_circ = float(m(patcher.run(task.clean, ablated, allowed & ~kept, mask=task.mask)))
        if abs(m_full - m_none) < 1e-9:
            raise MechscopeError(
                f"the metric is the same with and without the model ({m_full:.4g}): the task does "
                "not separate clean from ablated runs, so faithfulness is undefined"
            )
        return (m_circ - m_none) / (m_full - m_none)

    # Output

    def to_json(self) -> str:
        return json.dumps(
            {
                "graph": self.graph.spec(),
                "method": self.method,
                "metric": self.metric,
                "model": self.model,
                "info": self.info,
                "edges": [[s, r, float(v)] for (s, r), v in zip(self.edges, self.scores.tolist())],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "Circuit":
        try:
            data = json.loads(text)
            edges = [(s, r) for s, r, _ in data["edges"]]
            scores = torch.as_tensor([v for _, _, v in data["edges"]], dtype=torch.float32)
            return cls(
                Graph(**data["graph"]),
                edges,
                scores,
                data.get("method", ""),
                data.get("metric", ""),
                data.get("model", ""),
                data.get("info", {}),
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
            raise MechscopeError(f"not a circuit in JSON ({err}): write it with Circuit.to_json()") from None

    def save(self, folder) -> Path:
        """A folder with cfg.json (graph, edges, settings) and scores.safetensors."""
        folder = Path(folder)
        cfg = json.loads(self.to_json())
        cfg["edges"] = [[s, r] for s, r, _ in cfg["edges"]]
        write_tensors(folder / "scores.safetensors", {"scores": self.scores})
        write_json(folder / "cfg.json", cfg)
        return folder

    @classmethod
    def load(cls, folder) -> "Circuit":
        folder = Path(folder)
        if not (folder / "cfg.json").is_file() or not (folder / "scores.safetensors").is_file():
            raise MechscopeError(f"'{folder}' is not a saved circuit (it needs cfg.json and scores.safetensors)")
        cfg = json.loads((folder / "cfg.json").read_text())
        scores = load_file(folder / "scores.safetensors")["scores"]
        return cls(
            Graph(**cfg["graph"]),
            [tuple(e) for e in cfg["edges"]],
            scores,
            cfg.get("method", ""),
            cfg.get("metric", ""),
            cfg.get("model", ""),
            cfg.get("info", {}),
        )

    def to_dot(self) -> str:
        """Graphviz source: one node per head / KV head / MLP, edges labelled q, k or v."""
        lines = ["digraph circuit {", "  rankdir=BT;", '  node [shape=box, fontname="monospace"];']
        for node in self.nodes:
            shape = "ellipse" if node.startswith("m") else "box"
            lines.append(f'  "{node}" [shape={shape}];')
        for (s, r), v in zip(self.edges, self.scores.tolist()):
            channel = _channel(r)
            label = f"{channel} {v:.3g}".strip()
            lines.append(f'  "{s}" -> "{node_of(r)}" [label="{label}"];')
        return "\n".join(lines + ["}"])

    def plot(self, title: str | None = None):
        """Layered drawing (layer as height) with networkx + matplotlib; edge width ~ |score|,
        colour = the receiver's input (q blue, k green, v red, MLP / logits grey)."""
        import networkx as nx
        from matplotlib.figure import Figure

        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        for (s, r), v in zip(self.edges, self.scores.tolist()):
            g.add_edge(s, node_of(r), channel=_channel(r), score=v)
        pos: dict[str, tuple[float, float]] = {}
        rows: dict[float, list[str]] = {}
        for node in self.nodes:
            rows.setdefault(layer_of(node, self.graph.n_layers), []).append(node)
        for y, names in rows.items():
            for i, name in enumerate(names):
                pos[name] = (i - (len(names) - 1) / 2, y)
        fig = Figure(
            figsize=(max(5.0, 1.1 * max(len(v) for v in rows.values())), 1.2 + 1.1 * len(rows)), layout="constrained"
        )
        ax = fig.subplots()
        top = max((abs(d["score"]) for *_, d in g.edges(data=True)), default=1.0) or 1.0
        nx.draw_networkx_nodes(g, pos, ax=ax, node_color="#dde6f3", node_size=900, node_shape="s")
        nx.draw_networkx_labels(g, pos, ax=ax, font_size=7)
        for u, w, d in g.edges(data=True):
            nx.draw_networkx_edges(
                g,
                pos,
                edgelist=[(u, w)],
                ax=ax,
                width=0.5 + 3.0 * abs(d["score"]) / top,
                edge_color=CHANNEL_COLOURS[d["channel"]],
                arrows=True,
                node_size=900,
                connectionstyle="arc3,rad=0.08",
            )
        ax.set_title(title or f"{self.method} circuit: {self.n_edges} edges ({self.model})", fontsize=9)
        ax.axis("off")
        _legend(ax, self.channels())
        return fig

    def channels(self) -> list[str]:
        """The receiver inputs (q, k, v, "" for MLP / logits) that the edges write, in CHANNEL_COLOURS order."""
        present = {_channel(r) for _, r in self.edges}
        return [c for c in CHANNEL_COLOURS if c in present]


def _legend(ax, channels: list[str]) -> None:
    """One legend entry per edge colour drawn, and none for a colour that is not."""
    from matplotlib.lines import Line2D

    if channels:
        handles = [Line2D([], [], color=CHANNEL_COLOURS[c], lw=2, label=f"edge {CHANNEL_NAMES[c]}") for c in channels]
        ax.legend(
            handles=handles,
            loc="upper left",
            bbox_to_anchor=(1.0, 1.0),
            fontsize=7,
            title="width ~ |score|",
            title_fontsize=7,
        )


def _channel(receiver: str) -> str:
    return receiver.rsplit(".", 1)[1] if receiver.endswith((".q", ".k", ".v")) else ""
