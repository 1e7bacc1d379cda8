"""`mechscope patch MODEL TASK` (activation / attribution patching sweeps) and
`mechscope trace MODEL PROMPT --subject TEXT` (causal tracing)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import MechscopeError
from .arguments import count, positive

WINDOW = 10
"""Layers restored together for attn / mlp by default (ROME's window); clamped to the model's layers."""


def configure_patch(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="hub id, local folder, or zoo:NAME")
    parser.add_argument(
        "task",
        help='JSON or YAML file: {"clean": [...], "corrupt": [...], "answers": [...], '
        '"wrong": [...]} (prompts as text, or lists of token ids)',
    )
    parser.add_argument(
        "--sweep",
        choices=["resid", "attn", "mlp", "heads", "heads-pos"],
        default="resid",
        help="what to patch (default resid: hook_resid_pre per layer x position)",
    )
    parser.add_argument(
        "--direction",
        choices=["denoise", "noise"],
        default="denoise",
        help="denoise: clean values into the corrupted run; noise: corrupted into clean",
    )
    parser.add_argument(
        "--metric",
        choices=["logit_diff", "answer_prob", "answer_logit", "cross_entropy"],
        help="default: logit_diff when the task has wrong tokens, else answer_logit",
    )
    parser.add_argument(
        "--attribution",
        action="store_true",
        help="also estimate the sweep by attribution patching and report its agreement with the exact sweep",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="rows (patches x prompts) per forward")
    parser.add_argument(
        "--no-prefix",
        action="store_true",
        help="run every patched copy whole (default: the positions before the first token where clean and "
        "corrupted differ come from the KV cache, computed once)",
    )
    parser.add_argument("--top", type=count, default=10, help="how many patches to list")
    parser.add_argument("--json", action="store_true", help="machine-readable output (every score)")
    parser.add_argument("--plots", metavar="DIR", help="write heatmaps (PNG) here")
    return parser


def configure_trace(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="hub id, local folder, or zoo:NAME")
    parser.add_argument("prompt", help="the prompt to trace")
    parser.add_argument("--subject", required=True, help="substring of the prompt whose tokens are noised")
    parser.add_argument("--answer", help="token whose probability is read (default: the model's top prediction)")
    parser.add_argument("--noise", type=float, default=3.0, help="noise std as a multiple of W_E's std (default 3)")
    parser.add_argument("--samples", type=int, default=10, help="noise samples averaged (default 10)")
    parser.add_argument(
        "--window",
        type=positive,
        help=f"layers restored together for attn/mlp (default {WINDOW}, at most the model's layers)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the noise added to the subject's embeddings")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--plots", metavar="DIR", help="write the heatmaps (PNG) here")
    return parser


def _fail(err: MechscopeError) -> int:
    print(f"mechscope: error: {err}", file=sys.stderr)
    return 2


def execute_patch(args: argparse.Namespace) -> int:
    try:
        return _patch(args)
    except MechscopeError as err:
        return _fail(err)


def _patch(args: argparse.Namespace) -> int:
    from ..io import write_figure
    from ..models.loading import load
    from ..patching import Task, agreement, attribution_sweep, by_name, sweep

    model = load(args.model)
    task = Task.from_file(model, args.task)
    metric = by_name(args.metric or ("logit_diff" if task.wrong is not None else "answer_logit"), task)
    result = sweep(
        model,
        task,
        metric,
        sweep=args.sweep,
        direction=args.direction,
        batch_size=args.batch_size,
        progress=not args.json,
        prefix=not args.no_prefix,
    )
    results = {"exact": result}
    if args.attribution:
        results["attribution"] = attribution_sweep(model, task, metric, sweep=args.sweep, direction=args.direction)
    written = []
    if args.plots:
        for method, r in results.items():
            written.append(str(write_figure(Path(args.plots) / f"patch_{args.sweep}_{method}.png", r.plot())))
    fit = agreement(result, results["attribution"]) if args.attribution else None
    if args.json:
        out = {
            "metric": metric.name,
            "clean_metric": result.clean_metric,
            "corrupt_metric": result.corrupt_metric,
            "axes": result.axes,
            "positions": result.positions,
            "normalized": result.normalized,
            **{method: r.scores.tolist() for method, r in results.items()},
            "plots": written,
        }
        if fit is not None:
            out["agreement"] = {"pearson": fit.pearson, "sign": fit.sign}
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"{metric.name}: clean {result.clean_metric:.4f}, corrupt {result.corrupt_metric:.4f} "
        f"({args.direction}, {'normalised' if result.normalized else 'raw'} effects)"
    )
    for where, score in result.top(args.top):
        print(f"  {result.describe(where):>28}: {score:+.4f}")
    if fit is not None:
        print(f"attribution vs exact: Pearson r {fit.pearson:.3f}, sign agreement {fit.sign:.2f}")
    for path in written:
        print(f"wrote {path}")
    return 0


def execute_trace(args: argparse.Namespace) -> int:
    try:
        return _trace(args)
    except MechscopeError as err:
        return _fail(err)


def _trace(args: argparse.Namespace) -> int:
    from ..io import write_figure
    from ..models.loading import load
    from ..patching import causal_trace

    model = load(args.model)
    window = min(args.window or WINDOW, model.dims.n_layers)
    if window < (args.window or WINDOW):
        print(f"window of {window} layers: {model.name} has {model.dims.n_layers}", file=sys.stderr)
    trace = causal_trace(
        model,
        args.prompt,
        args.subject,
        answer=args.answer,
        noise=args.noise,
        samples=args.samples,
        window=window,
        seed=args.seed,
        progress=not args.json,
    )
    written = [str(write_figure(Path(args.plots) / "trace.png", trace.plot()))] if args.plots else []
    if args.json:
        print(
            json.dumps(
                {
                    "answer": trace.answer_text,
                    "window": window,
                    "clean_prob": trace.clean_prob,
                    "corrupt_prob": trace.corrupt_prob,
                    "subject_positions": trace.subject,
                    "tokens": trace.pos_labels,
                    **{k: grid.tolist() for k, grid in zip(trace.kinds, trace.probs)},
                    "plots": written,
                },
                indent=2,
            )
        )
        return 0
    print(f"answer {trace.answer_text!r}: clean p={trace.clean_prob:.4f}, subject noised p={trace.corrupt_prob:.4f}")
    for kind, grid in zip(trace.kinds, trace.probs):
        layer, pos = divmod(int(grid.argmax()), grid.shape[1])
        print(
            f"  best {kind} restore: layer {layer}, position {pos} ({trace.pos_labels[pos]!r}): "
            f"p={float(grid.max()):.4f}"
        )
    for path in written:
        print(f"wrote {path}")
    return 0
