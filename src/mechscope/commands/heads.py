"""`mechscope heads MODEL`: previous-token, duplicate-token and induction scores of every head."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="hub id, local folder, or zoo:NAME (e.g. zoo:induction)")
    parser.add_argument(
        "--text",
        help="also score previous-token attention on this text (default: only the generated repeated random sequences)",
    )
    parser.add_argument("--span", type=int, default=20, help="length of the random span repeated twice (default 20)")
    parser.add_argument("--batch", type=int, default=16, help="how many repeated sequences (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=5, help="how many heads to list per score")
    parser.add_argument("--json", action="store_true", help="machine-readable output (every head)")
    parser.add_argument("--plots", metavar="DIR", help="write a layer x head heatmap per score (PNG)")
    return parser


def execute(args: argparse.Namespace) -> int:
    from ..heads import duplicate_token_scores, induction_scores, previous_token_scores, repeated_tokens_for
    from ..io import write_figure
    from ..models.loading import load

    model = load(args.model)
    tokens = repeated_tokens_for(model, args.span, args.batch, args.seed)
    results = {
        "previous_token": previous_token_scores(model, tokens),
        "duplicate_token": duplicate_token_scores(model, tokens, span=args.span),
        "induction": induction_scores(model, tokens, span=args.span),
    }
    if args.text:
        results["previous_token_on_text"] = previous_token_scores(model, args.text)
    written = []
    if args.plots:
        for kind, scores in results.items():
            written.append(str(write_figure(Path(args.plots) / f"heads_{kind}.png", scores.plot())))
    if args.json:
        print(json.dumps({kind: s.scores.tolist() for kind, s in results.items()} | {"plots": written}, indent=2))
        return 0
    for kind, scores in results.items():
        top = ", ".join(f"L{layer}.H{head} {value:.2f}" for layer, head, value in scores.top(args.top))
        print(f"{kind:>24}: {top}")
    for path in written:
        print(f"wrote {path}")
    return 0
