"""The corpus arguments the dictionary commands share (`sae`, `transcoder`, `crosscoder`):
--data and its options on a parser, the token contexts they give, the held-out part."""

from __future__ import annotations

import argparse

from .arguments import ConfigDocs, positive
from .checks import context_length

CTX = 128
"""Tokens per context when --ctx is not given (fewer where the model reads fewer)."""


def data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
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


def corpus_tokens(args, model):
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


def heldout_contexts(args, model):
    from ..errors import MechscopeError

    data = corpus_tokens(args, model)
    held = data.heldout[: args.contexts]
    if len(held) == 0:
        raise MechscopeError("no held-out contexts: raise --heldout above 0")
    return held
