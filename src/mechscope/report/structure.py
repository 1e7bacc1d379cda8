"""Report section of `mechscope.structure`: weight spectra, and attention graphs of a run.

Add `section` to `report.sections.SECTIONS`.
"""

from __future__ import annotations

import html
import math

from .sections import _png, heading

MAX_GRAPH_POSITIONS = 128
"""Attention graphs, their statistics against random graphs, communities and arc diagrams
use at most the prompt's last this many tokens: the statistics cost grows with the cube
of the size (Louvain on a dense graph, n_null random graphs each), the diagrams' width
with the size."""
HEAD_COLUMNS = (
    "layer",
    "head",
    "n_edges",
    "density",
    "clustering_z",
    "mean_path_z",
    "in_degree_max_z",
    "elbow",
    "communities",
)


def _cell(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3g}"
    return html.escape(str(value))


def _table(rows: list[dict], columns) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r[c])}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _spectra(model) -> str:
    from ..structure import weight_spectra

    spectra = weight_spectra(model, kinds=("OV", "QK"))
    rows = []
    for layer in range(spectra.n_layers):
        row: dict[str, int | str] = {"layer": layer}
        for kind in ("OV", "QK"):
            v = spectra.by_layer(kind)[layer]
            row[kind] = f"{v.mean():.2f} [{v.min():.2f}, {v.max():.2f}]"
        rows.append(row)
    return (
        "<h3>Weight spectra</h3><p>Effective rank (exp of the entropy of σ²/Σσ²) of every head's OV circuit "
        f"(W_V W_O) and QK circuit (W_Q W_Kᵀ), each of rank at most d_head = {model.dims.d_head}: "
        "mean [min, max] over the heads of a layer.</p>" + _table(rows, ("layer", "OV", "QK")) + _png(spectra.plot())
    )


def _heads(dims) -> list[tuple[int, int]]:
    layers = sorted({0, dims.n_layers // 2, dims.n_layers - 1})
    return [(layer, head) for layer in layers for head in range(dims.n_heads)]


def _graphs(model, run, threshold: float = 0.1) -> str:
    from ..structure import attention_graphs

    graphs = attention_graphs(
        model,
        run.tokens[:1],
        attention_mask=run.mask[:1],
        heads=_heads(model.dims),
        threshold=threshold,
        window=MAX_GRAPH_POSITIONS,
    )
    length = int(run.mask[0].sum())
    bound = (
        f"<p><b>Statistics on the last {MAX_GRAPH_POSITIONS:,} of {length:,} positions</b>: every graph, "
        "statistic, community and diagram below is the subgraph of those tokens (attention to earlier ones "
        "left out), so that the cost stays bounded on long prompts.</p>"
        if length > MAX_GRAPH_POSITIONS
        else ""
    )
    rows = graphs.summary(n_null=20)
    zs = ("clustering_z", "mean_path_z", "in_degree_std_z", "out_degree_std_z")

    def distance(row):
        values = [abs(row[z]) for z in zs if not math.isnan(row[z])]
        return sum(values) / len(values) if values else 0.0

    shown = sorted(rows, key=distance, reverse=True)[:3]
    figures = "".join(_png(graphs.get(r["layer"], r["head"]).plot()) for r in shown)
    return (
        f"<h3>Attention graphs</h3><p>Each head's attention on the prompt as a directed graph (edge q→k where "
        f"attention &gt; {threshold:g}, self-loops dropped), compared with 20 Erdős–Rényi graphs of equal density "
        "(z-scores); elbow: profile-likelihood elbow of the attention matrix's singular values; communities: "
        "Louvain. Heads of the first, middle and last layers; arc diagrams of the three least random-looking "
        "heads (largest mean |z|).</p>"
        f"{bound}<details><summary>{len(rows)} heads</summary>{_table(rows, HEAD_COLUMNS)}</details>{figures}"
    )


def section(model, run) -> str:
    """Weight spectra of the OV/QK circuits; with a text run, attention graphs of some heads."""
    if getattr(model, "dims", None) is None or not hasattr(model, "W_Q"):
        return ""
    what = (
        "how many dimensions each head's circuits really use (from the weights alone) and, on the prompt, "
        "which heads attend in a structured rather than random-looking way."
    )
    parts = [heading("Structure", what), _spectra(model)]
    if run is not None and run.mask is not None and run.tokens.dim() == 2 and int(run.mask[0].sum()) > 1:
        parts.append(_graphs(model, run))
    return "".join(parts)
