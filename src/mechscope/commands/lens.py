"""`mechscope lens MODEL PROMPT`: what every layer would predict (logit lens, or a tuned
lens with --tuned). Maps one-to-one onto `mechscope.lens.logit_lens`; no science here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import MechscopeError
from .arguments import int_list


def save_figure(fig, path: str) -> Path:
    from ..io import write_figure

    return write_figure(Path(path), fig)


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="hub id, local folder, or zoo:NAME (e.g. zoo:pycode)")
    parser.add_argument("prompt", help="text to run the model on")
    parser.add_argument(
        "--tuned", metavar="PATH", help="read the layers through this saved tuned lens instead of the logit lens"
    )
    parser.add_argument(
        "--targets", nargs="+", metavar="TOKEN", help="tokens (one token each) whose probability and rank to show"
    )
    parser.add_argument("--positions", type=int_list, help="only these positions, e.g. -1 or 0,3,-1 (default: all)")
    parser.add_argument(
        "--layers", type=int_list, help="only these layers, e.g. 0,2,-1 (default: all, with the embeddings)"
    )
    parser.add_argument("--k", type=int, default=5, help="how many top tokens per layer and position (default 5)")
    parser.add_argument("--no-mid", action="store_true", help="leave out hook_resid_mid (between attention and MLP)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--plot", metavar="FILE.png", help="write the layer x position heatmap to this image file")
    parser.add_argument("--save", metavar="DIR", help="save the result (cfg.json + tensors.safetensors) to this folder")
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="cut a prompt longer than the model's context to its first positions (else refused)",
    )
    return parser


def _translator(path: str | None, model):
    if path is None:
        return None
    try:
        from ..lens.tuned import TunedLens
    except ImportError:
        raise MechscopeError("--tuned needs mechscope.lens.tuned, which this installation does not have") from None
    return TunedLens.load(path, model)


def _json(lens) -> dict:
    cols = lens.mask[0].nonzero().flatten().tolist()
    out = {
        "model": lens.model_name,
        "lens": lens.translator,
        "layers": lens.layers,
        "positions": [int(lens.positions[0, p]) for p in cols],
        "tokens": [lens.text(lens.tokens[0, p]) for p in cols],
        "top": [[lens.top_tokens(li, 0, p) for p in cols] for li in range(len(lens.layers))],
        "entropy": [[round(float(lens.entropy[li, 0, p]), 5) for p in cols] for li in range(len(lens.layers))],
        "kl": [[round(float(lens.kl[li, 0, p]), 5) for p in cols] for li in range(len(lens.layers))],
    }
    out["targets"] = {
        t: {
            "prob": [[float(lens.target_probs[li, 0, p, ti]) for p in cols] for li in range(len(lens.layers))],
            "rank": [[int(lens.target_ranks[li, 0, p, ti]) for p in cols] for li in range(len(lens.layers))],
        }
        for ti, t in enumerate(lens.targets)
    }
    return out


def _cell(text: str, width: int) -> str:
    text = repr(text)[1:-1]
    return (text if len(text) <= width else text[: width - 1] + "…").ljust(width)


def _table(lens, value) -> list[str]:
    """Rows of a layer x position text table (latest layer on top); `value(li, p)` -> str."""
    cols = lens.mask[0].nonzero().flatten().tolist()
    head = " " * 8 + " ".join(_cell(lens.text(lens.tokens[0, p]), 12) for p in cols)
    rows = [
        f"{label:>7} " + " ".join(_cell(value(li, p), 12) for p in cols)
        for li, label in reversed(list(enumerate(lens.layers)))
    ]
    return [head, *rows]


def execute(args: argparse.Namespace) -> int:
    from ..lens import logit_lens
    from ..models.loading import load

    model = load(args.model)
    prompt = (
        model.tokenize(args.prompt, truncate=True)["input_ids"] if args.truncate and model.tokenizer else args.prompt
    )
    lens = logit_lens(
        model,
        prompt,
        positions=args.positions,
        targets=args.targets,
        k=args.k,
        include_mid=not args.no_mid,
        layers=args.layers,
        translator=_translator(args.tuned, model),
    )
    if args.plot:
        save_figure(lens.plot(), args.plot)
    if args.save:
        lens.save(args.save)
    if args.json:
        print(json.dumps({**_json(lens), "plot": args.plot, "saved": args.save}, indent=2, ensure_ascii=False))
        return 0
    print(
        f"{lens.translator if lens.translator != 'identity' else 'logit'} lens of {lens.model_name}: top-1 token "
        "and probability per layer (rows) and input position (columns)"
    )
    top = lambda li, p: f"{lens.text(lens.top_ids[li, 0, p, 0])} {float(lens.top_probs[li, 0, p, 0]):.2f}"  # noqa: E731
    print("\n".join(_table(lens, top)))
    probs, ranks = lens.target_probs, lens.target_ranks
    for ti, target in enumerate(lens.targets):
        assert probs is not None and ranks is not None  # there are targets
        print(f"\np({target!r}) and its rank:")
        cell = lambda li, p: f"{float(probs[li, 0, p, ti]):.3f} #{int(ranks[li, 0, p, ti])}"  # noqa: E731
        print("\n".join(_table(lens, cell)))
    for path, what in ((args.plot, "plot"), (args.save, "result")):
        if path:
            print(f"wrote {what} to {path}")
    return 0
