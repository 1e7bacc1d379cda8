"""`mechscope zoo list | info | train | check`: the bundled, project-trained models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LIST_SHOWN = 8
"""Lists up to this long are printed in full by `zoo info`; longer ones (curves) only with --json."""


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="zoo_cmd", required=True)
    sub.add_parser("list", help="list zoo models")
    info = sub.add_parser("info", help="a zoo model's card: what it is, its recipe and measures")
    info.add_argument("name")
    info.add_argument("--json", action="store_true", help="print the whole card (curves included) as JSON")
    info.add_argument("--plots", metavar="DIR", help="also write the model's figures (PNG) into DIR")
    train = sub.add_parser("train", help="train a zoo model with its deterministic recipe")
    train.add_argument("name")
    train.add_argument("--out", help="output folder (default: the package's zoo folder)")
    train.add_argument("--seed", type=int, default=0, help="seeds the recipe (the shipped model used 0)")
    check = sub.add_parser("check", help="compare a retrained folder's card with the shipped card's tolerances")
    check.add_argument("name")
    check.add_argument("folder", help="the --out folder of `mechscope zoo train NAME`")


def execute(args: argparse.Namespace) -> int:
    from .. import zoo

    if args.zoo_cmd == "list":
        for name in zoo.names():
            print(f"{name:<14} {zoo.DESCRIPTIONS.get(name, '')}")
    elif args.zoo_cmd == "info":
        card = zoo.card(args.name)
        print(json.dumps(card, indent=2) if args.json else "\n".join(summary(args.name, card, zoo.DESCRIPTIONS)))
        if args.plots:
            for path in zoo.plots(args.name, Path(args.plots)):
                print(f"wrote {path}")
    elif args.zoo_cmd == "check":
        return _print_checks(zoo.check(args.name, Path(args.folder)))
    else:
        out = Path(args.out) if args.out else zoo.WEIGHTS / args.name
        card = zoo.train(args.name, out, seed=args.seed)
        print(json.dumps(card.get("metrics", card), indent=2))
        print(f"wrote {out}")
        if args.out:
            return _print_checks(zoo.check(args.name, out))
    return 0


def _print_checks(checks) -> int:
    """Exit status 1 when a retrain misses one of the shipped card's measures."""
    for check in checks:
        print(check.line())
    failed = sum(not c.ok for c in checks)
    print(f"{len(checks) - failed} of {len(checks)} measures reproduce the shipped card")
    return 1 if failed else 0


def summary(name: str, card: dict, descriptions: dict[str, str]) -> list[str]:
    """A card as readable lines: scalars and short lists in full, long lists (training
    curves, per-head tables) counted, with a pointer to --json."""
    lines = [f"zoo:{name} — {descriptions.get(name, '')}".rstrip(" —")]
    hidden = _lines(card, 0, lines)
    if hidden:
        lines.append(f"({hidden} long list(s) left out: `mechscope zoo info {name} --json` prints the whole card)")
    return lines


def _lines(values: dict, indent: int, lines: list[str]) -> int:
    """Append `key: value` lines for `values` (nested dicts indented); returns how many long
    lists were left out."""
    hidden, pad = 0, " " * indent
    width = max((len(str(k)) for k in values), default=0)
    for key, value in values.items():
        if isinstance(value, dict):
            if value and all(_scalar(v) for v in value.values()) and len(value) > LIST_SHOWN:
                lines.append(f"{pad}{key}:")
                text = ", ".join(f"{k}={_text(v)}" for k, v in value.items())
                lines += [f"{pad}  {chunk}" for chunk in _wrap(text, 96 - indent)]
            else:
                lines.append(f"{pad}{key}:")
                hidden += _lines(value, indent + 2, lines)
        elif isinstance(value, list) and (len(value) > LIST_SHOWN or not all(_scalar(v) for v in value)):
            lines.append(f"{pad}{str(key):<{width}}  ({len(value)} entries: see --json)")
            hidden += 1
        else:
            lines.append(f"{pad}{str(key):<{width}}  {_text(value)}")
    return hidden


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _text(value) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]
