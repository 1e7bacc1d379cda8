"""`mechscope sae cache|train`: record activations into a cache, train dictionaries on them.

`train` resumes when --out holds a checkpoint; `cache` and `train` run under `torchrun
--nproc_per_node N -m mechscope sae cache|train ...` (cache: each rank records its shards;
train: DDP; rank 0 writes the manifests and the dictionary, and prints).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import ConfigDocs, constant, count
from .checks import check_sites, training_schedule
from .corpus import corpus_tokens, data_args


def cache_args(p: argparse.ArgumentParser) -> None:
    source = ConfigDocs("dictionary.source", "SourceConfig")
    p.add_argument("model", help="hub id, local folder, or zoo:NAME (e.g. zoo:pycode)")
    p.add_argument("--site", action="append", required=True, help="site to record (repeat for several; globs work)")
    p.add_argument("--out", required=True, help="cache folder (resumes a partial one)")
    p.add_argument("--shard-contexts", type=int, default=256, help="contexts per shard file")
    p.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="storage dtype (float16 / bfloat16 halve the disk; their cost in FVU is in bench/README.md)",
    )
    p.add_argument("--model-batch", type=int, default=source.default("model_batch"), help=source["model_batch"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    data_args(p)


def train_args(p: argparse.ArgumentParser) -> None:
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
        "--adam", choices=constant("dictionary.trainer_config", "ADAMS"), default="dense", help=train["adam"]
    )
    p.add_argument(
        "--eval-contexts", type=count, default=64, help="held-out contexts for the final evaluation (0: none)"
    )
    p.add_argument(
        "--max-shards",
        type=count,
        help="with --cache: stream it, holding at most this many shards in memory (default: map the whole cache)",
    )
    p.add_argument(
        "--window-shards",
        type=count,
        default=1,
        help="with --max-shards: shards shuffled together (at most --max-shards)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    data_args(p, required=False)


def run_cache(args) -> dict | None:
    """Under `torchrun`, rank r records shards r, r + world, ...; the cache equals a one-rank one."""
    from ..distributed import init_distributed

    rank, world = init_distributed()
    try:
        meta = _cache_ranked(args, rank)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return meta if rank == 0 else None


def _cache_ranked(args, rank: int) -> dict:
    from ..dictionary.cache import write_cache
    from ..dictionary.source import SourceConfig
    from ..models.loading import load

    check_sites(args.model, args.site)
    model = load(args.model)
    data = corpus_tokens(args, model)
    folder = write_cache(
        model,
        args.site,
        data.train,
        args.out,
        cfg=SourceConfig(model_batch=args.model_batch),
        shard_contexts=args.shard_contexts,
        dtype=args.dtype,
        progress=not args.no_progress and not args.json and rank == 0,
    )
    if rank != 0:  # rank 0 writes the manifest once every rank's shards are there
        return {}
    meta = json.loads((folder / "cfg.json").read_text())
    return {"out": str(folder), "sites": meta["sites"], "n_tokens": meta["n_tokens"], "shards": len(meta["shards"])}


def run_train(args) -> dict | None:
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
    cfg = training_schedule(
        args, warn=rank == 0, eval_every=args.eval_every, dead_window=args.dead_window, adam=args.adam
    )
    progress = not args.no_progress and not args.json
    data = corpus_tokens(args, model) if args.data else None
    if args.cache:
        coders = train_from_cache(
            args.cache,
            cfgs,
            cfg,
            out=args.out,
            progress=progress,
            max_shards=args.max_shards,
            window_shards=args.window_shards,
        )
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
