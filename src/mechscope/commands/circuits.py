"""`mechscope circuit MODEL TASK --method acdc|eap|eap-ig`: discover the circuit of a task."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import MechscopeError


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="hub id, local folder, or zoo:NAME (e.g. zoo:induction)")
    parser.add_argument(
        "task",
        help='JSON or YAML file: {"clean": [...], "corrupt": [...], "answers": [...], '
        '"wrong": [...]} (prompts as text, or lists of token ids); "induction" builds a '
        "repeated-random-tokens task",
    )
    parser.add_argument(
        "--method",
        choices=["acdc", "eap", "eap-ig"],
        default="eap",
        help="acdc: greedy exact pruning; eap: one backward; eap-ig: integrated gradients (default eap)",
    )
    parser.add_argument(
        "--metric",
        choices=["logit_diff", "answer_prob", "answer_logit", "cross_entropy", "kl"],
        help="default: KL to the clean run for acdc; logit_diff (answer_logit without wrong tokens) for eap and eap-ig",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="acdc: keep an edge when removing it changes the metric "
        "by at least this (default 0.01); eap: keep edges with |score| >= this",
    )
    parser.add_argument("--top", type=int, help="eap / eap-ig: keep the N edges with the largest |score| (default 50)")
    parser.add_argument("--steps", type=int, default=5, help="eap-ig: interpolation steps (default 5)")
    parser.add_argument(
        "--ablation",
        choices=["corrupt", "mean", "zero"],
        default="corrupt",
        help="what a removed edge carries (default: the corrupted run's output)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (the circuit as JSON)")
    parser.add_argument("--plots", metavar="DIR", help="write the circuit drawing (PNG) and Graphviz source here")
    parser.add_argument("--out", metavar="DIR", help="save the circuit (cfg.json + scores.safetensors) here")
    return parser


def execute(args: argparse.Namespace) -> int:
    try:
        return _circuit(args)
    except MechscopeError as err:
        print(f"mechscope: error: {err}", file=sys.stderr)
        return 2


def _circuit(args: argparse.Namespace) -> int:
    from ..circuits import discover, induction_task
    from ..io import write_figure, write_text
    from ..models.loading import load
    from ..patching import Task

    model = load(args.model)
    task = induction_task(model) if args.task == "induction" else Task.from_file(model, args.task)
    if args.method == "acdc":
        if args.top is not None:
            raise MechscopeError("--top applies to eap / eap-ig; acdc keeps the edges above --threshold")
        kwargs = {"threshold": 0.01 if args.threshold is None else args.threshold, "progress": not args.json}
    else:
        kwargs = {"steps": args.steps} if args.method == "eap-ig" else {}
    found = discover(model, task, args.method, metric=args.metric, ablation=args.ablation, **kwargs)
    if args.method != "acdc":
        found = (
            found.circuit(threshold=args.threshold)
            if args.threshold is not None
            else found.circuit(top=50 if args.top is None else args.top)
        )
    faith = found.faithfulness(model, task, ablation=args.ablation)
    written = []
    if args.plots:
        written.append(str(write_figure(Path(args.plots) / f"circuit_{args.method}.png", found.plot())))
        written.append(str(write_text(Path(args.plots) / f"circuit_{args.method}.dot", found.to_dot())))
    if args.out:
        written.append(str(found.save(args.out)))
    if args.json:
        print(json.dumps({"circuit": json.loads(found.to_json()), "faithfulness": faith, "written": written}))
        return 0
    print(
        f"{args.method}: {found.n_edges} of {len(found.graph.edges)} edges, {len(found.nodes)} nodes; "
        f"faithfulness {faith:.3f} ({args.ablation} ablation of the rest)"
    )
    for (sender, receiver), score in found.top(20):
        print(f"  {sender:>10} -> {receiver:<12} {score:+.4f}")
    for path in written:
        print(f"wrote {path}")
    return 0
