"""`mechscope transcoder train|eval`: transcoders (read an MLP's input, predict its output) from the shell.

    mechscope transcoder train zoo:pycode --layer 0 --data corpus.jsonl --out runs/tc --width 4096 --k 32 --skip
    mechscope transcoder train zoo:pycode --site blocks.0.hook_resid_mid --target blocks.0.hook_mlp_out ...
    mechscope transcoder eval zoo:pycode runs/tc --data corpus.jsonl

`train` resumes when --out holds a checkpoint, runs under `torchrun --nproc_per_node N -m
mechscope transcoder train ...` (DDP; rank 0 writes and prints), and writes eval.json (the metrics with the
transcoder spliced in place of the MLP) beside the dictionary; `--cache` trains from an
activation cache that holds both sites (`mechscope sae cache --site IN --site OUT`). Each maps
onto `mechscope.dictionary` (transcoder_config, train, evaluate); no science here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import ConfigDocs, constant, count, positive
from .checks import training_schedule
from .corpus import corpus_tokens, data_args, heldout_contexts
from .printing import print_result


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="transcoder_cmd", required=True)
    for name, text, fill in [
        ("train", "train a transcoder on a model's MLP (or any two sites)", _train_args),
        (
            "eval",
            ("held-out metrics of a transcoder: FVU against the target, L0, CE/KL spliced in vs the MLP zero-ablated"),
            _eval_args,
        ),
    ]:
        p = sub.add_parser(name, help=text)
        fill(p)
        p.add_argument("--json", action="store_true", help="print the result as JSON")


def _train_args(p: argparse.ArgumentParser) -> None:
    coder, train = (
        ConfigDocs("dictionary.config", "CoderConfig"),
        ConfigDocs("dictionary.trainer_config", "TrainConfig"),
    )
    p.add_argument("model", help="hub id, local folder, or zoo:NAME (e.g. zoo:pycode)")
    p.add_argument(
        "--layer",
        type=int,
        help="the block whose MLP to replace: reads blocks.L.hook_resid_mid, predicts blocks.L.hook_mlp_out",
    )
    p.add_argument("--site", help="input site (default: from --layer)")
    p.add_argument("--target", help=coder["target_hook"] + " (default: from --layer)")
    p.add_argument("--skip", action="store_true", help=coder["skip"])
    p.add_argument(
        "--out", required=True, help="transcoder folder (cfg.json + sae.safetensors, metrics.json, eval.json)"
    )
    p.add_argument("--cache", help="train on this activation cache (holding both sites) instead of running the model")
    p.add_argument("--arch", choices=constant("dictionary.config", "ARCHITECTURES"), default="topk", help=coder["arch"])
    p.add_argument("--width", type=int, default=4096, help=coder["d_sae"])
    p.add_argument("--k", type=int, default=32, help=coder["k"])
    p.add_argument("--l1", type=float, default=coder.default("l1_coeff"), help=coder["l1_coeff"])
    p.add_argument("--l0", type=float, default=coder.default("l0_coeff"), help=coder["l0_coeff"])
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
    p.add_argument("--dead-window", type=int, help=train["dead_window"])
    p.add_argument(
        "--adam", choices=constant("dictionary.trainer_config", "ADAMS"), default="dense", help=train["adam"]
    )
    p.add_argument(
        "--eval-contexts", type=count, default=64, help="held-out contexts for the final evaluation (0: none)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    data_args(p, required=False)


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="hub id, local folder, or zoo:NAME")
    p.add_argument("transcoder", help="transcoder folder (from `mechscope transcoder train`)")
    p.add_argument("--contexts", type=positive, default=64, help="held-out contexts to evaluate on")
    p.add_argument("--plot", metavar="FILE.png", help="write the feature-density histogram here")
    p.add_argument("--save", metavar="DIR", help="save the evaluation (cfg.json + density.safetensors) here")
    data_args(p)


def execute(args: argparse.Namespace) -> int:
    result = {"train": _train, "eval": _eval}[args.transcoder_cmd](args)
    if result is None:  # not rank 0
        return 0
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_result(result)
    return 0


def _train(args) -> dict | None:
    from ..distributed import init_distributed

    rank, world = init_distributed()
    try:
        return _train_ranked(args, rank)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train_ranked(args, rank: int) -> dict | None:
    from ..dictionary.evaluate import evaluate
    from ..dictionary.train import train, train_from_cache
    from ..dictionary.transcoder import transcoder_config
    from ..errors import MechscopeError
    from ..io import write_json
    from ..models.loading import load

    model = load(args.model)
    if args.cache is None and not args.data:
        raise MechscopeError("give --data (a corpus to run the model on) or --cache (an activation cache)")
    cfg = transcoder_config(
        model,
        args.layer,
        site=args.site,
        target=args.target,
        arch=args.arch,
        width=args.width,
        k=args.k,
        l1_coeff=args.l1,
        l0_coeff=args.l0,
        skip=args.skip,
    )
    train_cfg = training_schedule(args, warn=rank == 0, dead_window=args.dead_window, adam=args.adam)
    progress = not args.no_progress and not args.json
    data = corpus_tokens(args, model) if args.data else None
    if args.cache:
        coder = train_from_cache(args.cache, cfg, train_cfg, out=args.out, progress=progress)
    else:
        assert data is not None  # --data is given when --cache is not (checked above)
        coder = train(model, cfg.hook_name, cfg, train_cfg, data=data.train, out=args.out, progress=progress)
    if rank != 0:
        return None
    out = Path(args.out)
    result: dict = {
        "out": str(out),
        "steps": train_cfg.steps,
        "site": cfg.hook_name,
        "target": cfg.target_hook,
        "skip": cfg.skip,
    }
    if data is not None and args.eval_contexts and len(data.heldout):
        result["eval"] = evaluate(model, coder, data.heldout[: args.eval_contexts]).to_dict()
        write_json(out / "eval.json", result["eval"])
    return result


def _eval(args) -> dict:
    from ..dictionary.base import SparseCoder
    from ..dictionary.evaluate import evaluate
    from ..errors import MechscopeError
    from ..models.loading import load

    model = load(args.model)
    coder = SparseCoder.load(args.transcoder)
    if not coder.cfg.transcoder:
        raise MechscopeError(f"'{args.transcoder}' holds an SAE, not a transcoder: use `mechscope sae eval`")
    result = evaluate(model, coder, heldout_contexts(args, model), progress=not args.json)
    if args.plot:
        from ..io import write_figure

        write_figure(Path(args.plot), result.plot())
    if args.save:
        result.save(args.save)
    return result.to_dict()
