"""Checks the commands make before heavy work: a mistyped site or layer before torch loads
(from the name and the model's config.json alone), --ctx against the model's context, too few training steps."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from ..errors import MechscopeError
from ..site_names import unknown_kind

log = logging.getLogger(__name__)
LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers")


def _local_config(model: str) -> dict | None:
    """The config.json of a zoo model or local folder, read as plain JSON; None where there is
    none to read (a hub id, a module folder): the full load then says what is wrong."""
    if model.startswith("zoo:"):
        from ..zoo import zoo_path

        try:
            folder = zoo_path(model[4:].split("@", 1)[0])
        except MechscopeError:
            return None
    else:
        folder = Path(model).expanduser()
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def check_sites(model: str, sites: list[str]) -> None:
    """Site names that no table has (a typo in the kind) and sites `blocks.L.*` whose layer
    the model does not have fail here, in the words the model's site table would use,
    without loading torch or the model."""
    config = _local_config(model) if sites else None
    if config is not None:  # a Hugging Face folder: its sites are table names (or module paths)
        for site in sites:
            why = unknown_kind(site)
            if why:
                raise MechscopeError(why)
    n_layers = next((config[k] for k in LAYER_KEYS if isinstance(config.get(k), int)), None) if config else None
    if n_layers is None:
        return
    for site in sites:
        layer = re.match(r"blocks\.(-?\d+)\.", site)
        if layer and not 0 <= int(layer.group(1)) < n_layers:
            raise MechscopeError(f"unknown site '{site}': this model has {n_layers} layers (0-{n_layers - 1})")


def context_length(model, ctx: int | None, default: int) -> int:
    """--ctx checked against the model's context; when not given, `default` or the model's
    context where that is shorter."""
    limit = getattr(model, "context_length", None)
    if ctx is None:
        chosen = default if limit is None else min(default, limit)
        if chosen < default:
            log.warning("contexts of %d tokens: %s reads no more positions (--ctx)", chosen, model.name)
        return chosen
    if limit is not None and ctx > limit:
        raise MechscopeError(
            f"--ctx {ctx} is longer than {model.name}'s context of {limit} positions: give --ctx {limit} or less"
        )
    return ctx


def warn_short_schedule(steps: int, warmup: int) -> None:
    """Training that ends before its learning-rate warm-up does is almost certainly a mistake."""
    if steps <= warmup:
        log.warning(
            "only %d training steps (--total-tokens / --batch-tokens), no more than the %d warm-up steps: "
            "the learning rate never reaches its peak; raise --total-tokens or lower --warmup",
            steps,
            warmup,
        )


def training_schedule(args, *, warn: bool = True, **extra):
    """The `TrainConfig` of the schedule options every dictionary command shares (plus
    `extra` fields), with the short-schedule warning (`warn`: on one rank only)."""
    from ..dictionary.trainer_config import TrainConfig

    cfg = TrainConfig(
        total_tokens=args.total_tokens,
        batch_tokens=args.batch_tokens,
        lr=args.lr,
        warmup_steps=args.warmup,
        decay=args.decay,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        **extra,
    )
    if warn:
        warn_short_schedule(cfg.steps, cfg.warmup_steps)
    return cfg
