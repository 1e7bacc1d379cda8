"""`mechscope steer vector|generate|search|export-gguf|import-gguf` and `mechscope
serve-steer`: thin wrappers over `mechscope.steering` and `server.steer_app`; no science here."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ..errors import MechscopeError
from .arguments import int_list, positive


def finite(text: str) -> float:
    """A finite number (argparse type): NaN and infinities are refused at parse time."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def finite_list(text: str) -> list[float]:
    return [finite(part) for part in text.split(",")]


def read_arg(text: str):
    """--read: last, mean, or comma-separated positions."""
    return text if text in ("last", "mean") else int_list(text)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="steer_cmd", required=True)
    for name, text, fill in [
        ("vector", "a steering vector from contrast pairs", _vector_args),
        ("generate", "generate with a steering vector, next to the unsteered text", _generate_args),
        ("search", "sweep layer x strength: behaviour, fluency, anti-steerable share, recommendation", _search_args),
        ("export-gguf", "write a steering vector as a llama.cpp control vector (.gguf)", _export_args),
        ("import-gguf", "read a llama.cpp control vector (.gguf) into a steering-vector folder", _import_args),
    ]:
        p = sub.add_parser(name, help=text, description=text)
        fill(p)
        p.add_argument("--json", action="store_true", help="print the result as JSON")


def _pairs_args(p: argparse.ArgumentParser) -> None:
    from ..steering.contrast import METHODS

    p.add_argument("--pairs", required=True, help="contrast pairs: .csv (positive,negative), .jsonl or .json (or CAA)")
    p.add_argument("--method", choices=METHODS, default="mean_diff", help="how to turn pairs into a direction")
    p.add_argument("--read", type=read_arg, default="last", help="positions read: last, mean, or e.g. -2")


def _vector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="hub id, local folder, or zoo:NAME")
    _pairs_args(p)
    p.add_argument("--sites", default="blocks.*.hook_resid_post", help="site name or glob to read the vector at")
    p.add_argument("--out", required=True, help="folder to write the vector to (cfg.json + directions.safetensors)")
    p.add_argument("--batch-size", type=positive, default=16, help="pairs per forward")


def _generate_args(p: argparse.ArgumentParser) -> None:
    from ..steering.apply import WHERE

    p.add_argument("model", help="hub id, local folder, or zoo:NAME")
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--vector", required=True, help="steering-vector folder (steer vector --out, import-gguf --out)")
    p.add_argument("--strength", type=finite, default=4.0, help="multiplier of the vector")
    p.add_argument(
        "--where", choices=WHERE, default="all", help="steer the prompt's positions, the generated ones, or both"
    )
    p.add_argument(
        "--normalize", choices=("none", "unit", "activation"), default="none", help="rescale the vector first"
    )
    p.add_argument("--max-new-tokens", type=positive, default=30, help="tokens to generate (greedy)")


def _search_args(p: argparse.ArgumentParser) -> None:
    from ..steering.search import DEFAULT_STRENGTHS

    p.add_argument("model", help="hub id, local folder, or zoo:NAME")
    _pairs_args(p)
    p.add_argument("--vector", help="search this vector (its layers) instead of fitting one per layer from --pairs")
    p.add_argument("--heldout", help="held-out pairs file (default: the last quarter of --pairs)")
    p.add_argument("--layers", type=int_list, help="layers to try, e.g. 0,1,2 (default: all)")
    p.add_argument(
        "--strengths", type=finite_list, default=",".join(f"{s:g}" for s in DEFAULT_STRENGTHS), help="strengths"
    )
    p.add_argument("--normalize", choices=("none", "unit", "activation"), default="activation", help="strength unit")
    p.add_argument("--max-fluency", type=finite, default=1.0, help="largest KL (nats) the recommended cell may cost")
    p.add_argument("--plots", metavar="DIR", help="write heatmap.png and pareto.png here")
    p.add_argument("--save", metavar="DIR", help="save the result (cfg.json + tensors.safetensors) here")


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("vector", help="steering-vector folder")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--model-hint", help="controlvector.model_hint (default: the model type the vector was read on)")


def _import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("gguf", help="a llama.cpp control vector (.gguf)")
    p.add_argument("--out", required=True, help="folder to write the steering vector to")
    p.add_argument("--model-name", default="", help="the model the vector is for (kept as provenance)")


def execute(args: argparse.Namespace) -> int:
    return {
        "vector": _vector,
        "generate": _generate,
        "search": _search,
        "export-gguf": _export,
        "import-gguf": _import,
    }[args.steer_cmd](args)


def _emit(args, data: dict, lines: list[str]) -> int:
    print(json.dumps(data, indent=2, ensure_ascii=False) if args.json else "\n".join(lines))
    return 0


def _vector(args) -> int:
    from ..models.loading import load
    from ..steering import contrast

    model = load(args.model)
    vector = contrast(model, args.pairs, args.sites, read=args.read, method=args.method, batch_size=args.batch_size)
    out = vector.save(args.out)
    norms = {s: round(float(d.norm()), 4) for s, d in vector.directions.items()}
    lines = [f"steering vector from {vector.n_pairs} pairs ({vector.method}) -> {out}"]
    lines += [f"  {s}: norm {n} (mean activation norm {vector.norms[s]:.4g})" for s, n in norms.items()]
    return _emit(args, {**vector.config(), "direction_norms": norms, "out": str(out)}, lines)


def _generate(args) -> int:
    from ..models.loading import load
    from ..steering import SteeringVector, generate

    model = load(args.model)
    vector = SteeringVector.load(args.vector).normalized(args.normalize)
    vector.check_model(model)
    plain = model.generate(args.prompt, max_new_tokens=args.max_new_tokens)
    steered = generate(model, args.prompt, (vector, args.strength, args.where), max_new_tokens=args.max_new_tokens)
    data = {
        "prompt": args.prompt,
        "strength": args.strength,
        "where": args.where,
        "unsteered": plain,
        "steered": steered,
    }
    lines = [
        "--- unsteered ---",
        str(plain),
        f"--- steered (strength {args.strength:g}, {args.where}) ---",
        str(steered),
    ]
    return _emit(args, data, lines)


def _search(args) -> int:
    from ..io import write_figure
    from ..models.loading import load
    from ..steering import SteeringVector, search

    model = load(args.model)
    source = SteeringVector.load(args.vector) if args.vector else args.pairs
    result = search(
        model,
        source,
        layers=args.layers,
        strengths=args.strengths,
        heldout=args.heldout or (args.pairs if args.vector else None),
        normalize=args.normalize,
        read=args.read,
        method=args.method,
        max_fluency=args.max_fluency,
    )
    plots = {}
    if args.plots:
        plots["heatmap"] = str(write_figure(Path(args.plots) / "heatmap.png", result.plot()))
        plots["pareto"] = str(write_figure(Path(args.plots) / "pareto.png", result.plot_pareto()))
    if args.save:
        result.save(args.save)
    data = {"model": result.model_name, "recommended": result.recommended, "cells": result.rows(), "plots": plots}
    lines = [f"{'layer':>5} {'strength':>9} {'behaviour':>10} {'fluency':>8} {'anti':>5}"]
    for row in result.rows():
        mark = " *" if [row["layer"], row["strength"]] == result.recommended else (" p" if row["pareto"] else "")
        lines.append(
            f"{row['layer']:>5} {row['strength']:>9g} {row['behaviour']:>10.4f} {row['fluency']:>8.4f} "
            f"{row['anti_steerable']:>5.2f}{mark}"
        )
    lines.append(f"recommended (*): {result.recommended}   p: Pareto front   fluency: {result.fluency_metric}")
    return _emit(args, data, lines)


def _export(args) -> int:
    from ..steering import SteeringVector, export_gguf

    out = export_gguf(SteeringVector.load(args.vector), args.out, model_hint=args.model_hint)
    return _emit(args, {"out": str(out)}, [f"wrote {out}"])


def _import(args) -> int:
    from ..steering import import_gguf

    vector = import_gguf(args.gguf, model_name=args.model_name)
    out = vector.save(args.out)
    return _emit(args, {"out": str(out), "sites": vector.sites}, [f"{len(vector.sites)} direction(s) -> {out}"])


# serve-steer


def configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="hub id, local folder, or zoo:NAME")
    parser.add_argument(
        "--vectors", required=True, help="folder of steering-vector folders; each subfolder's name is a vector name"
    )
    parser.add_argument("--saes", help="folder of dictionary folders that requests may clamp (by subfolder name)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (non-local needs --token)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    parser.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every request")
    parser.add_argument("--max-batch", type=positive, default=8, help="requests generated together in one batch")


def execute_serve(args: argparse.Namespace) -> int:
    from ..models.loading import load
    from ..server.core import check_bind, serve_forever
    from ..server.steer_app import SteerService, steer_app

    check_bind(args.host, args.token)  # refuse before loading anything
    model = load(args.model)
    service = SteerService(model, args.vectors, saes=args.saes, max_batch=args.max_batch)
    if not service.vectors:
        raise MechscopeError(f"no steering vectors in {args.vectors}: write some with `mechscope steer vector`")
    app = steer_app(service, token=args.token)
    serve_forever(
        app, args.host, args.port, args.token, announce=lambda url: print(f"serving {model.name} at {url}/v1")
    )
    return 0
