"""`mechscope lens train MODEL --data PATH_OR_GLOB`: train a tuned lens on local text,
save it, and print the held-out KL per layer against the logit lens.

Runs in one process, or on several with `torchrun --nproc_per_node N -m mechscope lens
train ...` (DDP; gloo on CPU): every rank reads the same corpus and trains on its own
slice of each batch; rank 0 writes and prints.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

CTX = 256
"""Tokens per training context when --ctx is not given (fewer where the model reads fewer)."""


def configure(parser: argparse.ArgumentParser) -> None:
    from .arguments import ConfigDocs, count, positive

    data, train = ConfigDocs("data", "DataConfig"), ConfigDocs("lens.tuned", "TunedLensConfig")
    parser.add_argument("model", help="hub id, local folder, or zoo:NAME (e.g. zoo:pycode)")
    parser.add_argument("--data", required=True, help=data["path"])
    parser.add_argument(
        "--out",
        help="folder for the lens (cfg.json + translators.safetensors), its checkpoint "
        "and metrics.json; default runs/tuned-lens/MODEL",
    )
    parser.add_argument("--steps", type=int, default=train.default("steps"), help=train["steps"])
    parser.add_argument(
        "--ctx",
        type=positive,
        help=data["ctx_len"] + f" Default: {CTX}, or the model's context where "
        "that is shorter; more than the model's context is refused.",
    )
    parser.add_argument("--batch", type=int, default=train.default("batch_size"), help=train["batch_size"])
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help=train["optimizer"])
    parser.add_argument("--lr", type=float, help=train["lr"])
    parser.add_argument("--warmup", type=int, help=train["warmup_steps"])
    parser.add_argument(
        "--autocast", choices=["off", "bf16", "auto"], default=train.default("autocast"), help=train["autocast"]
    )
    parser.add_argument("--text-field", default="text", help=data["text_field"])
    parser.add_argument("--max-tokens", type=int, help=data["max_tokens"])
    parser.add_argument("--heldout", type=float, default=0.05, help=data["heldout_fraction"])
    parser.add_argument("--eval-contexts", type=count, default=64, help="held-out contexts used for the KL table")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the held-out split and the order of training contexts"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def execute(args: argparse.Namespace) -> int:
    from ..distributed import init_distributed

    rank, world = init_distributed()
    try:
        return _train_and_report(args, rank, world)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train_and_report(args: argparse.Namespace, rank: int, world: int) -> int:
    from ..data import DataConfig, load_tokens
    from ..io import write_json
    from ..lens.tuned import TunedLensConfig, evaluate, train
    from ..models.loading import load
    from .checks import context_length

    model = load(args.model)
    ctx = context_length(model, args.ctx, CTX)
    out = Path(args.out) if args.out else Path("runs") / "tuned-lens" / re.sub(r"[^A-Za-z0-9_.-]+", "-", model.name)
    data = load_tokens(
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
    cfg = TunedLensConfig(
        steps=args.steps,
        batch_size=args.batch,
        optimizer=args.optimizer,
        lr=args.lr,
        warmup_steps=args.warmup,
        seed=args.seed,
        autocast=args.autocast,
    )
    lens = train(model, data.train, cfg, out=out, progress=not args.no_progress and not args.json)
    if rank != 0:
        return 0
    heldout = data.heldout[: args.eval_contexts]
    if len(heldout) == 0:
        result: dict[str, Any] = {
            "out": str(out),
            "ranks": world,
            "layers": [],
            "note": "no held-out contexts (--heldout 0)",
        }
    else:
        evaluation = evaluate(model, lens, heldout)
        result = {
            "out": str(out),
            "ranks": world,
            "heldout_tokens": evaluation.n_tokens,
            "train_contexts": len(data.train),
            "layers": evaluation.rows(),
        }
    write_json(out / "metrics.json", result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"tuned lens for {model.name}: {cfg.steps} steps x {cfg.batch_size} contexts of {ctx} tokens"
        f" on {world} rank(s); saved to {out}"
    )
    if result["layers"]:
        print(f"\nheld-out KL(final || lens), nats/token over {result['heldout_tokens']} tokens:")
        print(f"  {'layer':<8}{'logit lens':>12}{'tuned lens':>12}")
        for row in result["layers"]:
            print(f"  {row['layer']:<8}{row['logit_kl']:>12.4f}{row['tuned_kl']:>12.4f}")
    return 0
