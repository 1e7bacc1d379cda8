"""`mechscope attention-graph` and `mechscope spectra`: the CLI of `mechscope.structure`."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from ..errors import MechscopeError

log = logging.getLogger(__name__)


def _finite(value):
    """JSON-safe copy: NaN and inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _save_figure(fig, path: Path) -> Path:
    from ..io import write_figure

    return write_figure(path, fig)


def configure_attention_graph(parser):
    parser.add_argument("model", help="hub id, local folder, or zoo:NAME")
    parser.add_argument("prompt", help="text to run the model on")
    parser.add_argument("--heads", help="heads as layer.head, comma-separated, e.g. 0.1,2.3 (default: every head)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.1,
        help="keep edges q->k whose attention weight is above this (default 0.1)",
    )
    parser.add_argument(
        "--null",
        dest="n_null",
        type=int,
        default=50,
        help="Erdős–Rényi graphs sampled per head for the baseline (default 50)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled baseline and of Louvain")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--plots", metavar="DIR", help="write per head: arc diagram, scree, spectral embedding, statistics (PNG)"
    )
    return parser


def _graph_plots(graph, out: Path, n_null: int, seed: int) -> list[str]:
    stem = f"L{graph.layer}H{graph.head}"
    written = [
        _save_figure(graph.plot(), out / f"{stem}_graph.png"),
        _save_figure(graph.spectrum().plot(), out / f"{stem}_scree.png"),
        _save_figure(graph.stats(n_null=n_null, seed=seed).plot(), out / f"{stem}_stats.png"),
    ]
    try:
        written.append(_save_figure(graph.embedding(seed=seed).plot(), out / f"{stem}_embedding.png"))
    except MechscopeError as err:
        log.warning("no embedding plot for %s: %s", graph.label, err)
    return [str(p) for p in written]


def execute_attention_graph(args) -> int:
    from ..models.loading import load
    from ..structure import attention_graphs

    model = load(args.model)
    if model.tokenizer is None:
        raise MechscopeError(
            f"{model.name} has no tokenizer, so it cannot read a text prompt; "
            "use the library (structure.attention_graphs) with token ids"
        )
    graphs = attention_graphs(model, args.prompt, heads=args.heads, threshold=args.threshold)
    rows = graphs.summary(n_null=args.n_null, seed=args.seed)
    plots = []
    if args.plots:
        for graph in graphs.graphs:
            plots += _graph_plots(graph, Path(args.plots), args.n_null, args.seed)
    tokens = graphs.graphs[0].tokens
    if args.json:
        print(
            json.dumps(
                _finite(
                    {
                        "model": model.name,
                        "tokens": tokens,
                        "threshold": args.threshold,
                        "n_null": args.n_null,
                        "seed": args.seed,
                        "heads": rows,
                        "plots": plots,
                    }
                ),
                indent=2,
            )
        )
        return 0
    from ..structure._common import table

    print(
        f"{model.name}: {len(tokens)} tokens, edges with attention > {args.threshold:g}; "
        f"z-scores against {args.n_null} Erdős–Rényi graphs of equal density"
    )
    columns = [
        "layer",
        "head",
        "n_edges",
        "density",
        "clustering",
        "clustering_z",
        "mean_path",
        "mean_path_z",
        "in_degree_max",
        "in_degree_max_z",
        "elbow",
        "communities",
        "modularity",
    ]
    print(table(rows, columns))
    if plots:
        print(f"wrote {len(plots)} plots to {args.plots}")
    return 0


# spectra


def configure_spectra(parser):
    parser.add_argument("model", help="hub id, local folder, or zoo:NAME")
    parser.add_argument(
        "--vs", metavar="OTHER", help="a model of the same architecture (e.g. a fine-tune): analyse OTHER - MODEL"
    )
    parser.add_argument(
        "--top-k", type=int, default=8, help="k for the top-k energy share and the update's top directions (default 8)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (every matrix)")
    parser.add_argument("--plots", metavar="DIR", help="write effective/stable rank across layers (PNG)")
    return parser


def _layer_rows(spectra) -> list[dict]:
    rows = []
    for layer in range(spectra.n_layers):
        row: dict[str, float] = {"layer": layer}
        for kind in ("OV", "QK"):
            values = spectra.by_layer(kind)[layer]
            row[f"{kind}_eff_rank"] = float(values.mean()) if len(values) else math.nan
            row[f"{kind}_min"], row[f"{kind}_max"] = float(values.min()), float(values.max())
        for kind in ("W_in", "W_out", "W_gate"):
            row[f"{kind}_eff_rank"] = float(spectra.by_layer(kind)[layer, 0])
        rows.append(row)
    return rows


def _diff_rows(diff) -> list[dict]:
    """Whole matrices and circuits (not the per-head Q/K/V/O slices) for the text table."""
    keep = [r for r in diff.rows if r["head"] is None or r["kind"] in ("OV", "QK")]
    return [
        {
            **{k: r[k] for k in ("name", "relative_norm", "rank", "elbow", "effective_rank")},
            "angle_left": r["angles_left"][0] if r["angles_left"] else math.nan,
        }
        for r in keep
    ]


def execute_spectra(args) -> int:
    from ..models.loading import load
    from ..structure import weight_diff, weight_spectra
    from ..structure._common import table

    progress = bool(getattr(args, "verbose", False))
    model = load(args.model)
    other = load(args.vs) if args.vs else None
    spectra = weight_spectra(model, top_k=args.top_k, progress=progress)
    diff = weight_diff(model, other, k=args.top_k, progress=progress) if other is not None else None
    plots = []
    if args.plots:
        out = Path(args.plots)
        plots += [
            _save_figure(spectra.plot("effective_rank"), out / "spectra_effective_rank.png"),
            _save_figure(spectra.plot("stable_rank"), out / "spectra_stable_rank.png"),
        ]
        if diff is not None:
            plots += [
                _save_figure(diff.plot("relative_norm"), out / "update_relative_norm.png"),
                _save_figure(diff.plot("rank"), out / "update_rank.png"),
            ]
    if args.json:
        print(
            json.dumps(
                _finite(
                    {
                        "model": model.name,
                        "spectra": spectra.to_records(),
                        "diff": None
                        if diff is None
                        else {"base": diff.base, "tuned": diff.tuned, "rows": diff.to_records()},
                        "plots": [str(p) for p in plots],
                    }
                ),
                indent=2,
            )
        )
        return 0
    print(f"{model.name}: effective rank (exp of the entropy of σ²/Σσ²) per layer; OV/QK: mean [min, max] over heads")
    print(
        table(
            _layer_rows(spectra),
            [
                "layer",
                "OV_eff_rank",
                "OV_min",
                "OV_max",
                "QK_eff_rank",
                "QK_min",
                "QK_max",
                "W_in_eff_rank",
                "W_gate_eff_rank",
                "W_out_eff_rank",
            ],
        )
    )
    for row in spectra.rows:
        if row["kind"] in ("W_E", "W_U"):
            print(f"{row['name']}: effective rank {row['effective_rank']:.1f}, stable rank {row['stable_rank']:.2f}")
    if diff is not None:
        print(
            f"\nupdate {diff.tuned} - {diff.base}: relative norm, numerical rank, profile-likelihood elbow, "
            "smallest principal angle (degrees) to the base's top directions"
        )
        print(table(_diff_rows(diff), ["name", "relative_norm", "rank", "elbow", "effective_rank", "angle_left"]))
    if plots:
        print(f"wrote {len(plots)} plots to {args.plots}")
    return 0
