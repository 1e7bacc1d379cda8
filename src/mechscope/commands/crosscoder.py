"""`mechscope crosscoder train|diff`: crosscoders across layers, and model diffing.

    # one dictionary over several layers of one model (acausal, or weakly causal)
    mechscope crosscoder train zoo:pycode --site blocks.1.hook_resid_post --site blocks.2.hook_resid_post \\
        --data corpus.jsonl --out runs/cc [--variant weakly-causal]
    # the same site of two models on the same tokens (model diffing)
    mechscope crosscoder train BASE --vs FINETUNE --site blocks.3.hook_resid_post --data corpus.jsonl --out runs/diff
    mechscope crosscoder diff BASE FINETUNE runs/diff --data corpus.jsonl --plot hist.png [--save runs/diff/diff]

Models are hub ids, folders or zoo:NAME; `zoo:modadd@STEP` (a training snapshot of the
grokking model) loads here as everywhere. `--data pairs` feeds a modular-addition model all p x p inputs `a b =`
(p = vocabulary - 1) and keeps only the `=` position. `train` resumes from --out's
checkpoint. Each subcommand maps onto `mechscope.dictionary` (stacked, crosscoder,
diffing); no science here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .arguments import ConfigDocs, constant, count, positive
from .checks import check_sites, training_schedule
from .corpus import data_args
from .printing import marked, print_result

VARIANTS = {"acausal": "crosscoder", "weakly-causal": "weakly_causal_crosscoder"}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="crosscoder_cmd", required=True)
    diff_help = (
        "relative decoder norms of a two-model crosscoder: shared and exclusive latents, histogram, top contexts"
    )
    for name, text, fill in [
        ("train", "train a crosscoder on several sites of a model, or one site of two models", _train_args),
        ("diff", diff_help, _diff_args),
    ]:
        p = sub.add_parser(name, help=text)
        fill(p)
        p.add_argument("--json", action="store_true", help="print the result as JSON")


def _train_args(p: argparse.ArgumentParser) -> None:
    train = ConfigDocs("dictionary.trainer_config", "TrainConfig")
    p.add_argument("model", help="hub id, local folder, zoo:NAME or zoo:modadd@STEP (model A)")
    p.add_argument("--vs", metavar="MODEL_B", help="diff against this model: one --site, read in both models")
    p.add_argument("--labels", default="A,B", help="names of the two models in the block names (with --vs)")
    p.add_argument(
        "--site",
        action="append",
        required=True,
        help="site to read (repeat, in forward order, for a crosscoder across layers; globs work)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="crosscoder folder (cfg.json + sae.safetensors, metrics.json); "
        "holds checkpoint/ while training, which a rerun resumes",
    )
    p.add_argument(
        "--variant",
        choices=sorted(VARIANTS),
        default="acausal",
        help="acausal: every latent reads and writes every site; weakly-causal: a latent reads one layer "
        "and writes it and the later ones",
    )
    p.add_argument("--width", type=int, default=4096, help="number of latents")
    p.add_argument(
        "--l1", type=float, default=1.0, help="weight of the L1 penalty on the sum of per-site decoder norms"
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
    p.add_argument(
        "--eval-contexts", type=count, default=64, help="held-out contexts for the final evaluation (0: none)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    data_args(p)


def _diff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_a", help="model A (the crosscoder's first block)")
    p.add_argument("model_b", help="model B (its second block)")
    p.add_argument("crosscoder", help="folder written by `crosscoder train --vs`")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.1,
        help="exclusive when r = |d_B| / (|d_A| + |d_B|) <= threshold (A only) or >= 1 - threshold (B only)",
    )
    p.add_argument(
        "--contexts", type=positive, default=256, help="held-out contexts to measure firing and find top contexts"
    )
    p.add_argument("--top", type=count, default=5, help="exclusive latents shown per model")
    p.add_argument("--k", type=int, default=5, help="top contexts per latent shown")
    p.add_argument("--plot", metavar="FILE.png", help="write the relative-norm histogram here")
    p.add_argument("--save", metavar="DIR", help="save the diff (cfg.json + tensors.safetensors) here")
    data_args(p)


def execute(args: argparse.Namespace) -> int:
    result = {"train": _train, "diff": _diff}[args.crosscoder_cmd](args)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    contexts = {k: result.pop(k) for k in list(result) if k.startswith("contexts_")}
    print_result(result)
    for key, rows in contexts.items():
        print(f"top contexts of the {key.removeprefix('contexts_').replace('_', '-')} latents:")
        for row in rows:
            print(
                f"  latent {row['feature']:>6} {row['value']:8.3f}  {marked(row['tokens'], row.get('centre', -1), ' ')}"
            )
    return 0


# Data


def tokens_and_source(args, model, *, heldout: bool) -> tuple:
    """(token contexts, SourceConfig fields saying which positions are kept): a corpus, or
    with --data pairs every `a b =` input of Z_p with only the `=` position kept."""
    from ..dictionary.source import SourceConfig

    if args.data == "pairs":
        from ..zoo.modadd import model_pairs

        tokens = model_pairs(model)
        return tokens, {"exclude_first": False, "exclude_tokens": tuple(range(model.dims.d_vocab - 1))}
    from .corpus import corpus_tokens

    data = corpus_tokens(args, model)
    tokens = data.heldout if heldout else data.train
    return tokens, {"exclude_first": SourceConfig.exclude_first}


def _train(args) -> dict:
    from ..dictionary.source import SourceConfig
    from ..dictionary.stacked import train_crosscoder
    from ..errors import MechscopeError
    from ..models.loading import load

    check_sites(args.model, args.site)
    model = load(args.model)
    tokens, keep = tokens_and_source(args, model, heldout=False)
    labels = tuple(args.labels.split(","))
    if len(labels) != 2:
        raise MechscopeError(f"--labels needs two names separated by a comma, got {args.labels!r}")
    if args.vs and len(args.site) != 1:
        raise MechscopeError("with --vs give one --site: the crosscoder reads that site in both models")
    other = load(args.vs) if args.vs else None
    train = training_schedule(args)
    coder = train_crosscoder(
        model,
        args.site,
        args.width,
        train,
        data=tokens,
        vs=other,
        labels=labels,
        arch=VARIANTS[args.variant],
        source=SourceConfig(**keep),
        out=args.out,
        progress=not args.no_progress and not args.json,
        l1_coeff=args.l1,
    )
    result = {
        "out": args.out,
        "arch": coder.cfg.arch,
        "blocks": list(coder.cfg.blocks),
        "width": args.width,
        "steps": train.steps,
    }
    if args.eval_contexts:
        result["eval"] = _evaluate(args, coder, model, other)
    return result


def _evaluate(args, coder, model, other) -> dict:
    from ..dictionary.crosscoder import block_metrics
    from ..dictionary.diffing import stacked_activations
    from ..dictionary.source import SourceConfig, keep_mask
    from ..io import write_json

    tokens, keep = tokens_and_source(args, model, heldout=True)
    tokens = tokens if args.data == "pairs" else tokens[: args.eval_contexts]  # pairs: all of them
    if len(tokens) == 0:
        return {}
    sites = [b.rsplit(":", 1)[1] if other is not None else b for b in coder.cfg.blocks]
    members = [(model, sites[0]), (other, sites[1])] if other is not None else [(model, s) for s in sites]
    x = stacked_activations(members, tokens)[keep_mask(tokens, SourceConfig(**keep))]
    metrics = block_metrics(coder, x)
    write_json(Path(args.out) / "eval.json", metrics)
    return metrics


def _diff(args) -> dict:
    from ..dictionary.base import SparseCoder
    from ..dictionary.crosscoder import Crosscoder, block_metrics
    from ..dictionary.diffing import (
        density,
        diff,
        exclusive_contexts,
        stacked_activations,
    )
    from ..dictionary.source import SourceConfig, keep_mask
    from ..dictionary.stacked import check_same_inputs
    from ..errors import MechscopeError
    from ..models.loading import load

    coder = SparseCoder.load(args.crosscoder)
    if not isinstance(coder, Crosscoder) or coder.n_blocks != 2 or not all(":" in b for b in coder.cfg.blocks):
        raise MechscopeError(
            f"{args.crosscoder} is not a two-model crosscoder (train one with `crosscoder train --vs`)"
        )
    model_a, model_b = load(args.model_a), load(args.model_b)
    check_same_inputs(model_a, model_b)
    sites = [b.rsplit(":", 1)[1] if ":" in b else b for b in coder.cfg.blocks]
    tokens, keep = tokens_and_source(args, model_a, heldout=True)
    tokens = tokens[: args.contexts] if args.data != "pairs" else tokens
    if len(tokens) == 0:
        raise MechscopeError("no held-out contexts: raise --heldout above 0")
    members = [(model_a, sites[0]), (model_b, sites[1])]
    x = stacked_activations(members, tokens)
    source = SourceConfig(**keep)
    mask = keep_mask(tokens, source)
    result = diff(coder, threshold=args.threshold, density=density(coder, x, mask))
    if args.plot:
        from ..io import write_figure

        write_figure(Path(args.plot), result.plot())
    if args.save:
        result.save(args.save)
    out = {
        "crosscoder": args.crosscoder,
        "blocks": list(coder.cfg.blocks),
        **result.to_dict(),
        "reconstruction": block_metrics(coder, x[mask]),
    }
    for kind in ("a_only", "b_only"):
        chosen = result.latents(kind)[: args.top]
        top = exclusive_contexts(coder, members, tokens, chosen, k=args.k, source=source, acts_in=x)
        out[f"contexts_{kind}"] = top.rows()
        out[kind] = out[kind][:50]
    return out
