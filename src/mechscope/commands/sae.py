"""`mechscope sae cache|train|eval|features|convert`: sparse dictionaries from the shell.

    mechscope sae cache zoo:pycode --site blocks.2.hook_resid_post --data corpus.jsonl --out runs/acts
    mechscope sae train zoo:pycode --site blocks.2.hook_resid_post --data corpus.jsonl --out runs/sae \\
        --arch topk --width 4096 --k 32 [--cache runs/acts]
    mechscope sae eval zoo:pycode runs/sae --data corpus.jsonl
    mechscope sae features zoo:pycode runs/sae --data corpus.jsonl --features 0,5,9
    mechscope sae convert path/to/saelens-folder runs/sae-converted
    mechscope sae meta runs/sae --out runs/sae/meta --width 1024 --k 4 --latents 0,5
    mechscope sae error zoo:pycode runs/sae --data corpus.jsonl --plot error.png --save runs/sae/error

`train` resumes when --out holds a checkpoint, and runs under `torchrun --nproc_per_node N
-m mechscope sae train ...` (DDP; rank 0 writes and prints). Each maps onto one call of
`mechscope.dictionary`; no science here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import constant, int_list, positive
from .corpus import data_args, heldout_contexts
from .printing import print_error, print_features, print_meta, print_result
from .sae_train import cache_args, run_cache, run_train, train_args


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sae_cmd", required=True)
    for name, text, fill in [
        ("cache", "record a site's activations over a corpus into a sharded cache", cache_args),
        ("train", "train dictionaries on sites of a model (or on a cache)", train_args),
        ("eval", "held-out metrics of a dictionary: L0, FVU, CE/KL scores, density", _eval_args),
        ("features", "top activating contexts of some features", _features_args),
        ("convert", "rewrite a dictionary (SAELens, sparsify, mechscope) as mechscope or SAELens", _convert_args),
        ("meta", "meta-SAE: which meta-latents each latent's decoder direction is built from", _meta_args),
        ("error", "how much of the dictionary's error is linearly predictable from the input", _error_args),
    ]:
        p = sub.add_parser(name, help=text)
        fill(p)
        p.add_argument("--json", action="store_true", help="print the result as JSON")


def _dictionary_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="hub id, local folder, or zoo:NAME")
    p.add_argument("sae", help="dictionary folder (mechscope, SAELens or sparsify layout)")
    p.add_argument("--hookpoint", help="which dictionary of a multi-site sparsify folder")


def _eval_args(p: argparse.ArgumentParser) -> None:
    _dictionary_args(p)
    p.add_argument("--contexts", type=positive, default=64, help="held-out contexts to evaluate on")
    p.add_argument("--plot", metavar="FILE.png", help="write the feature-density histogram here")
    p.add_argument("--save", metavar="DIR", help="save the evaluation (cfg.json + density.safetensors) here")
    data_args(p)


def _features_args(p: argparse.ArgumentParser) -> None:
    _dictionary_args(p)
    p.add_argument("--features", type=int_list, default="0,1,2,3,4", help="comma-separated feature indices")
    p.add_argument("--top", type=int, default=5, help="contexts per feature")
    p.add_argument("--contexts", type=positive, default=256, help="held-out contexts searched")
    data_args(p)


def _convert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="dictionary folder in any supported layout")
    p.add_argument("dst", help="output folder")
    p.add_argument("--to", choices=["mechscope", "saelens"], default="mechscope", help="output layout")
    p.add_argument("--hookpoint", help="which dictionary of a multi-site sparsify folder")


def _meta_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sae", help="dictionary folder (mechscope, SAELens or sparsify layout) whose decoder to decompose")
    p.add_argument("--hookpoint", help="which dictionary of a multi-site sparsify folder")
    p.add_argument("--out", help="save the meta-SAE here (cfg.json + sae.safetensors, composition.safetensors)")
    p.add_argument(
        "--arch",
        choices=constant("dictionary.config", "ARCHITECTURES"),
        default="batchtopk",
        help="meta-SAE architecture",
    )
    p.add_argument("--width", type=int, help="meta-latents (default: a quarter of the dictionary's latents)")
    p.add_argument("--k", type=int, default=4, help="active meta-latents per latent (on average for batchtopk)")
    p.add_argument("--epochs", type=int, default=200, help="passes over the decoder rows")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0, help="seeds the initialisation and the row order")
    p.add_argument(
        "--latents", type=int_list, default="0,1,2,3,4", help="comma-separated latents whose composition to print"
    )
    p.add_argument("--plot", metavar="FILE.png", help="write the composition histograms here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _error_args(p: argparse.ArgumentParser) -> None:
    _dictionary_args(p)
    p.add_argument(
        "--contexts", type=positive, default=256, help="held-out contexts (their tokens are split into fit / test)"
    )
    p.add_argument("--test-fraction", type=float, default=0.5, help="share of the tokens the predictions are scored on")
    p.add_argument("--ridge", type=float, default=1e-3, help="ridge penalty, relative to the mean eigenvalue of XᵀX")
    p.add_argument("--plot", metavar="FILE.png", help="write predicted vs actual error norm and the R² bars here")
    p.add_argument("--save", metavar="DIR", help="save the analysis here (e.g. SAE/error: the report shows it)")
    data_args(p)


def execute(args: argparse.Namespace) -> int:
    handler = {
        "cache": run_cache,
        "train": run_train,
        "eval": _eval,
        "features": _features,
        "convert": _convert,
        "meta": _meta,
        "error": _error,
    }[args.sae_cmd]
    result = handler(args)
    if result is None:  # not rank 0
        return 0
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        {"features": print_features, "meta": print_meta, "error": print_error}.get(args.sae_cmd, print_result)(result)
    return 0


def _read(args):
    from ..dictionary import formats

    return formats.read(args.sae, hookpoint=args.hookpoint)


def _eval(args) -> dict:
    from ..dictionary.evaluate import evaluate
    from ..models.loading import load

    model = load(args.model)
    coder = _read(args)
    held = heldout_contexts(args, model)
    result = evaluate(model, coder, held, progress=not args.json)
    if args.plot:
        from ..io import write_figure

        write_figure(Path(args.plot), result.plot())
    if args.save:
        result.save(args.save)
    return result.to_dict()


def _features(args) -> dict:
    from ..dictionary.features import top_contexts
    from ..models.loading import load

    model = load(args.model)
    coder = _read(args)
    found = top_contexts(model, coder, heldout_contexts(args, model), args.features, k=args.top)
    return {"sae": args.sae, "features": found.rows()}


def _convert(args) -> dict:
    from ..dictionary.formats import convert

    return {"out": str(convert(args.src, args.dst, to=args.to, hookpoint=args.hookpoint)), "to": args.to}


def _meta(args) -> dict:
    from ..dictionary.meta import train_meta

    coder = _read(args)
    meta = train_meta(
        coder,
        width=args.width,
        k=args.k,
        arch=args.arch,
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        progress=not args.json and not args.no_progress,
    )
    if args.out:
        meta.save(args.out)
    if args.plot:
        from ..io import write_figure

        write_figure(Path(args.plot), meta.plot())
    latents = [i for i in args.latents if i < len(meta.indices)]
    return {
        **meta.to_dict(),
        "out": args.out,
        "composition": {str(i): [[j, round(w, 4)] for j, w in meta.components(i)] for i in latents},
    }


def _error(args) -> dict:
    from ..dictionary.error import error_analysis
    from ..models.loading import load
    from ..tokens import decode

    model = load(args.model)
    coder = _read(args)
    result = error_analysis(
        model, coder, heldout_contexts(args, model), test_fraction=args.test_fraction, ridge=args.ridge, seed=args.seed
    )
    if args.plot:
        from ..io import write_figure

        write_figure(Path(args.plot), result.plot())
    if args.save:
        result.save(args.save)
    worst = [
        {"context": c, "position": p, "norm": round(v, 4), "token": decode(model, int(result.tokens[c, p]))}
        for c, p, v in result.worst(5)
    ]
    return {**result.to_dict(), "largest_errors": worst}
