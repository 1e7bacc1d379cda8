"""`mechscope dla MODEL PROMPT --target TOKEN [--vs TOKEN]`: which components write a logit
(difference) directly. Maps onto `mechscope.attribution.direct_logit_attribution`."""

from __future__ import annotations

import argparse
import json

from .lens import save_figure


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="hub id, local folder, or zoo:NAME (e.g. zoo:pycode)")
    parser.add_argument("prompt", help="text to run the model on")
    parser.add_argument(
        "--target", required=True, metavar="TOKEN", help="the token whose logit to attribute (one token)"
    )
    parser.add_argument("--vs", metavar="TOKEN", help="attribute logit(target) - logit(vs) instead")
    parser.add_argument("--position", type=int, default=-1, help="position to attribute (default -1: the last)")
    parser.add_argument("--top", type=int, default=15, help="how many components to list and plot (default 15)")
    parser.add_argument("--json", action="store_true", help="machine-readable output (every component)")
    parser.add_argument("--plot", metavar="FILE", help="write a bar chart of the top components to this image file")
    parser.add_argument("--save", metavar="DIR", help="save the result (cfg.json + tensors.safetensors) to this folder")
    return parser


def execute(args: argparse.Namespace) -> int:
    from ..attribution import direct_logit_attribution
    from ..models.loading import load

    model = load(args.model)
    result = direct_logit_attribution(model, args.prompt, args.target, args.vs, positions=args.position)
    if args.plot:
        save_figure(result.plot(k=args.top), args.plot)
    if args.save:
        result.save(args.save)
    values = result.contributions[:, 0, 0]
    if args.json:
        print(
            json.dumps(
                {
                    "model": result.model_name,
                    "metric": result.metric(),
                    "position": int(result.positions[0, 0]),
                    "token": result.text(result.tokens[0, 0]),
                    "logit": float(result.logit[0, 0]),
                    "output_logit": float(result.output_logit[0, 0]),
                    "sum": float(values.sum()),
                    "components": {label: float(v) for label, v in zip(result.labels, values)},
                    "top": result.top(args.top),
                    "plot": args.plot,
                    "saved": args.save,
                },
                indent=2,
                ensure_ascii=False,
            )
        )
        return 0
    print(
        f"direct logit attribution of {result.metric()} at position {int(result.positions[0, 0])} "
        f"({result.text(result.tokens[0, 0])!r}) in {result.model_name}"
    )
    print(f"  total {float(result.logit[0, 0]):+.4f} (sum of components {float(values.sum()):+.4f})")
    output = float(result.output_logit[0, 0])
    if abs(output - float(result.logit[0, 0])) > 1e-6:
        cap = getattr(getattr(model.hf, "config", None), "final_logit_softcapping", None)
        print(
            f"  the model outputs {output:+.4f} after soft-capping its logits at ±{cap:g}"
            if cap
            else f"  the model's own output is {output:+.4f}"
        )
    for label, value in result.top(args.top):
        print(f"  {label:<18} {value:+.4f}")
    for path, what in ((args.plot, "plot"), (args.save, "result")):
        if path:
            print(f"wrote {what} to {path}")
    return 0
