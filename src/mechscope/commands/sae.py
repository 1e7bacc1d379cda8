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

from .arguments import ConfigDocs, constant, count, int_list, positive
from .checks import check_sites, context_length, warn_short_schedule
from .printing import print_error, print_features, print_meta, print_result

CTX = 128
"""Tokens per context when --ctx is not given (fewer where the model reads fewer)."""


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sae_cmd", required=True)
    for name, text, fill in [
        ("cache", "record a site's activations over a corpus into a sharded cache", _cache_args),
        ("train", "train dictionaries on sites of a model (or on a cache)", _train_args),
        ("eval", "held-out metrics of a dictionary: L0, FVU, CE/KL scores, density", _eval_args),
        ("features", "top activating contexts of some features", _features_args),
        ("convert", "rewrite a dictionary (SAELens, sparsify, mechscope) as mechscope or SAELens", _convert_args),
        ("meta", "meta-SAE: which meta-latents each latent's decoder direction is built from", _meta_args),
        ("error", "how much of the dictionary's error is linearly predictable from the input", _error_args),
    ]:
        p = sub.add_parser(name, help=text)
        fill(p)
        p.add_argument("--json", action="store_true", help="print the result as JSON")


def _data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    docs = ConfigDocs("data", "DataConfig")
    p.add_argument("--data", required=required, help=docs["path"])
    p.add_argument(
        "--ctx",
        type=positive,
        help=docs["ctx_len"] + f" Default: {CTX}, or the model's context where "
        "that is shorter; more than the model's context is refused.",
    )
    p.add_argument("--text-field", default="text", help=docs["text_field"])
    p.add_argument("--max-tokens", type=int, help=docs["max_tokens"])
    p.add_argument("--heldout", type=float, default=0.05, help=docs["heldout_fraction"])
    p.add_argument("--seed", type=int, default=0, help=docs["seed"])


def _cache_args(p: argparse.ArgumentParser) -> None:
    source = ConfigDocs("dictionary.source", "SourceConfig")
    p.add_argument("model", help="hub id, local folder, or zoo:NAME (e.g. zoo:pycode)")
    p.add_argument("--site", action="append", required=True, help="site to record (repeat for several; globs work)")
    p.add_argument("--out", required=True, help="cache folder (resumes a partial one)")
    p.add_argument("--shard-contexts", type=int, default=256, help="contexts per shard file")
    p.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="storage dtype")
    p.add_argument("--model-batch", type=int, default=source.default("model_batch"), help=source["model_batch"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _data_args(p)


def _train_args(p: argparse.ArgumentParser) -> None:
    coder, train = (
        ConfigDocs("dictionary.config", "CoderConfig"),
        ConfigDocs("dictionary.trainer_config", "TrainConfig"),
    )
    p.add_argument("model", help="hub id, local folder, or zoo:NAME (also used to evaluate a cache-trained dictionary)")
    p.add_argument(
        "--site",
        action="append",
        help="site to train on (repeat for one dictionary per site); default: every site of --cache",
    )
    p.add_argument(
        "--out",
        required=True,
        help="dictionary folder (cfg.json + sae.safetensors, metrics.json); "
        "holds checkpoint/ while training, which a rerun resumes",
    )
    p.add_argument(
        "--cache",
        help="train on this activation cache (`sae cache`) instead of running the model; "
        "--data, if given too, is then only the held-out evaluation corpus",
    )
    p.add_argument("--arch", choices=constant("dictionary.config", "ARCHITECTURES"), default="topk", help=coder["arch"])
    p.add_argument("--width", type=int, default=4096, help=coder["d_sae"])
    p.add_argument("--k", type=int, default=32, help=coder["k"])
    p.add_argument("--l1", type=float, default=coder.default("l1_coeff"), help=coder["l1_coeff"])
    p.add_argument("--l0", type=float, default=coder.default("l0_coeff"), help=coder["l0_coeff"])
    p.add_argument(
        "--input-norm",
        choices=constant("dictionary.config", "INPUT_NORMS"),
        default="none",
        help="layer_norm: standardise each input over its features before encoding (SAELens layer_norm)",
    )
    p.add_argument("--total-tokens", type=int, default=train.default("total_tokens"), help=train["total_tokens"])
    p.add_argument("--batch-tokens", type=int, default=train.default("batch_tokens"), help=train["batch_tokens"])
    p.add_argument("--lr", type=float, help=train["lr"])
    p.add_argument("--warmup", type=int, default=train.default("warmup_steps"), help=train["warmup_steps"])
    p.add_argument(
        "--decay", choices=constant("dictionary.trainer_config", "DECAYS"), default="linear", help=train["decay"]
    )
    p.add_argument(
        "--checkpoint-every", type=int, default=train.default("checkpoint_every"), help=train["checkpoint_every"]
    )
    p.add_argument("--eval-every", type=int, default=0, help=train["eval_every"])
    p.add_argument("--dead-window", type=int, help=train["dead_window"])
    p.add_argument(
        "--eval-contexts", type=count, default=64, help="held-out contexts for the final evaluation (0: none)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _data_args(p, required=False)


def _dictionary_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="hub id, local folder, or zoo:NAME")
    p.add_argument("sae", help="dictionary folder (mechscope, SAELens or sparsify layout)")
    p.add_argument("--hookpoint", help="which dictionary of a multi-site sparsify folder")


def _eval_args(p: argparse.ArgumentParser) -> None:
    _dictionary_args(p)
    p.add_argument("--contexts", type=positive, default=64, help="held-out contexts to evaluate on")
    p.add_argument("--plot", metavar="FILE.png", help="write the feature-density histogram here")
    p.add_argument("--save", metavar="DIR", help="save the evaluation (cfg.json + density.safetensors) here")
    _data_args(p)


def _features_args(p: argparse.ArgumentParser) -> None:
    _dictionary_args(p)
    p.add_argument("--features", type=int_list, default="0,1,2,3,4", help="comma-separated feature indices")
    p.add_argument("--top", type=int, default=5, help="contexts per feature")
    p.add_argument("--contexts", type=positive, default=256, help="held-out contexts searched")
    _data_args(p)


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
    _data_args(p)


def execute(args: argparse.Namespace) -> int:
    handler = {
        "cache": _cache,
        "train": _train,
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


def _tokens(args, model):
    from ..data import DataConfig, load_tokens

    ctx = context_length(model, args.ctx, CTX)
    return load_tokens(
        DataConfig(
            args.data,
            ctx_len=ctx,
            text_field=args.text_field,
            max_tokens=args.max_tokens,
            heldout_fraction=args.heldout,
            seed=args.seed,
        ),
        model.tokenizer,
    )


def _cache(args) -> dict:
    from ..dictionary.cache import write_cache
    from ..dictionary.source import SourceConfig
    from ..models.loading import load

    check_sites(args.model, args.site)
    model = load(args.model)
    data = _tokens(args, model)
    folder = write_cache(
        model,
        args.site,
        data.train,
        args.out,
        cfg=SourceConfig(model_batch=args.model_batch),
        shard_contexts=args.shard_contexts,
        dtype=args.dtype,
        progress=not args.no_progress and not args.json,
    )
    meta = json.loads((folder / "cfg.json").read_text())
    return {"out": str(folder), "sites": meta["sites"], "n_tokens": meta["n_tokens"], "shards": len(meta["shards"])}


def _train(args) -> dict | None:
    from ..distributed import init_distributed

    rank, world = init_distributed()
    try:
        return _train_ranked(args, rank, world)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train_ranked(args, rank: int, world: int) -> dict | None:
    from ..dictionary.cache import read_manifest
    from ..dictionary.config import CoderConfig
    from ..dictionary.evaluate import evaluate
    from ..dictionary.source import resolve_sites, site_width
    from ..dictionary.train import train, train_from_cache
    from ..dictionary.trainer_config import TrainConfig
    from ..errors import MechscopeError
    from ..io import write_json
    from ..models.loading import load

    check_sites(args.model, args.site or [])
    model = load(args.model)
    if args.cache is None and not args.data:
        raise MechscopeError("give --data (a corpus to run the model on) or --cache (an activation cache)")
    if args.site:
        sites = resolve_sites(model, args.site)
    elif args.cache:
        sites = read_manifest(args.cache)["sites"]
    else:
        raise MechscopeError("give --site (which activation to train on)")
    cfgs = [
        CoderConfig(
            args.arch,
            site_width(model, s),
            args.width,
            k=args.k,
            l1_coeff=args.l1,
            l0_coeff=args.l0,
            input_norm=args.input_norm,
            hook_name=s,
            model_name=model.name,
        )
        for s in sites
    ]
    cfg = TrainConfig(
        total_tokens=args.total_tokens,
        batch_tokens=args.batch_tokens,
        lr=args.lr,
        warmup_steps=args.warmup,
        decay=args.decay,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        dead_window=args.dead_window,
        seed=args.seed,
    )
    if rank == 0:
        warn_short_schedule(cfg.steps, cfg.warmup_steps)
    progress = not args.no_progress and not args.json
    data = _tokens(args, model) if args.data else None
    if args.cache:
        coders = train_from_cache(args.cache, cfgs, cfg, out=args.out, progress=progress)
    else:
        assert data is not None  # --data is given when --cache is not (checked above)
        coders = train(
            model,
            sites,
            cfgs,
            cfg,
            data=data.train,
            out=args.out,
            progress=progress,
            heldout=data.heldout[: args.eval_contexts] if args.eval_every else None,
        )
    assert isinstance(coders, list)  # a list of configs gives a list of coders
    if rank != 0:
        return None
    out = Path(args.out)
    result: dict = {"out": str(out), "ranks": world, "steps": cfg.steps, "sites": sites}
    if data is not None and args.eval_contexts and len(data.heldout):
        for i, coder in enumerate(coders):
            folder = out if len(coders) == 1 else out / f"{i}-{coder.cfg.hook_name}"
            metrics = evaluate(model, coder, data.heldout[: args.eval_contexts]).to_dict()
            write_json(folder / "eval.json", metrics)
            result["eval" if len(coders) == 1 else f"eval.{coder.cfg.hook_name}"] = metrics
    return result


def _read(args):
    from ..dictionary import formats

    return formats.read(args.sae, hookpoint=args.hookpoint)


def _eval(args) -> dict:
    from ..dictionary.evaluate import evaluate
    from ..models.loading import load

    model = load(args.model)
    coder = _read(args)
    held = _heldout(args, model)
    result = evaluate(model, coder, held, progress=not args.json)
    if args.plot:
        from ..io import write_figure

        write_figure(Path(args.plot), result.plot())
    if args.save:
        result.save(args.save)
    return result.to_dict()


def _heldout(args, model):
    from ..errors import MechscopeError

    data = _tokens(args, model)
    held = data.heldout[: args.contexts]
    if len(held) == 0:
        raise MechscopeError("no held-out contexts: raise --heldout above 0")
    return held


def _features(args) -> dict:
    from ..dictionary.features import top_contexts
    from ..models.loading import load

    model = load(args.model)
    coder = _read(args)
    found = top_contexts(model, coder, _heldout(args, model), args.features, k=args.top)
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
        model, coder, _heldout(args, model), test_fraction=args.test_fraction, ridge=args.ridge, seed=args.seed
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
