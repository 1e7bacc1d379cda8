"""`mechscope info | run | report`: a model's sites, one forward pass, the HTML report.
Each maps onto one library call; no science here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import MechscopeError
from .arguments import int_list
from .checks import check_sites

MODEL_HELP = "hub id, local folder, zoo:NAME (e.g. zoo:pycode) or zoo:modadd@STEP (a training snapshot)"


def configure_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def execute_info(args) -> int:
    from ..models.auto_model import provenance
    from ..models.loading import load

    model = load(args.model)
    info = {
        **model.info(),
        "provenance": provenance(model),
    }  # which sites are exact by table, verified guesses, module paths
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    sites = info.pop("sites")
    notes = info.pop("notes")
    for key, value in info.items():
        if key != "provenance":
            print(f"{key:>12}: {value}")
    for note in notes:
        print(f"{'note':>12}: {note}")
    for source, kinds in info.pop("provenance").items():
        print(f"{'sites':>12}: {source}: {', '.join(kinds)}")
    print(f"\n{len(sites)} sites (TransformerLens names; blocks.* repeats per layer):")
    for name, dims in sites.items():
        if name.startswith("blocks.") and not name.startswith("blocks.0."):
            continue
        shape = ", ".join(d if s is None else f"{d}={s}" for d, s in dims.items())
        print(f"  {name.replace('blocks.0.', 'blocks.{l}.'):<34} [{shape}]")
    return 0


def configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("prompt", help="text to run the model on")
    parser.add_argument("--record", action="append", metavar="GLOB", help="site name or glob to record (repeatable)")
    parser.add_argument("--positions", type=int_list, help="record only these positions, e.g. -1 or 0,3,-1")
    parser.add_argument("--top", type=int, default=5, help="how many next tokens to show")
    parser.add_argument("--out", help="write the recorded activations to this .safetensors file")
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="cut a prompt longer than the model's context to its first positions (else refused)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def execute_run(args) -> int:
    if args.out and not args.record:
        raise MechscopeError(
            f"--out {args.out} would hold no activations: add --record GLOB (e.g. 'blocks.*.hook_resid_post')"
        )
    check_sites(args.model, args.record or [])  # a mistyped layer fails before torch loads
    from ..io import write_tensors
    from ..models.loading import load

    model = load(args.model)
    if args.record:
        model.table.resolve(args.record)  # any other unknown site fails before the forward pass
    ids = (
        model.tokenize(args.prompt, truncate=args.truncate)["input_ids"] if model.tokenizer is not None else args.prompt
    )
    run = model.run(ids, record=args.record or [], positions=args.positions)
    top = run.top_tokens(args.top) if run.logits is not None else [[]]
    shapes = {name: list(value.shape) for name, value in run.cache.items()}
    if args.out:
        write_tensors(Path(args.out), dict(run.cache), {"model": model.name, "prompt": args.prompt})
    if args.json:
        print(
            json.dumps({"tokens": run.str_tokens(), "top_next": top[0], "recorded": shapes, "out": args.out}, indent=2)
        )
        return 0
    print(f"tokens ({len(run.str_tokens())}): {run.str_tokens()}")
    if top[0]:
        print("top next tokens: " + ", ".join(f"{t!r} {p:.3f}" for t, p in top[0]))
    for name, shape in shapes.items():
        print(f"  {name:<34} {shape}")
    if args.out:
        print(f"wrote {len(shapes)} activations to {args.out}")
    return 0


def configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("--prompt", help="text to run the model on (models that read text)")
    parser.add_argument("--out", required=True, help="output folder (index.html goes there)")
    parser.add_argument(
        "--sae", metavar="DIR", help="a dictionary folder (from `mechscope sae train`) to show in the report"
    )
    parser.add_argument(
        "--store",
        metavar="STORE",
        help="a feature store built from the --sae dictionary (`mechscope features build`): adds corpus "
        "densities and the top contexts of the prompt's features",
    )
    parser.add_argument(
        "--crosscoder",
        metavar="DIR",
        help="a crosscoder folder (from `mechscope crosscoder train`) to show in the report",
    )
    parser.add_argument(
        "--vector",
        metavar="DIR",
        help="a steering vector (from `mechscope steer vector`): its projection on the prompt and steered text",
    )
    parser.add_argument(
        "--probe",
        metavar="DIR",
        help="a probe or confidence probe (from `mechscope probe train` / `confidence train`): per-token scores",
    )
    parser.add_argument(
        "--eraser", metavar="DIR", help="a LEACE eraser (from `mechscope erase fit`): what erasing costs on the prompt"
    )
    parser.add_argument(
        "--fv", metavar="DIR", help="a function vector's saved result (`mechscope fv ... --save-result DIR`)"
    )
    parser.add_argument(
        "--relation",
        metavar="DIR",
        help="a linear relation's saved result (`mechscope relation ... --save-result DIR`)",
    )


def execute_report(args) -> int:
    from ..models.loading import load
    from ..report import build_report

    if args.store and not args.sae:  # before the model loads
        raise MechscopeError(f"--store {args.store} needs --sae DIR: the dictionary the store was built from")
    path = build_report(
        load(args.model),
        args.prompt,
        Path(args.out),
        sae_dir=args.sae,
        crosscoder_dir=args.crosscoder,
        store_dir=args.store,
        vector_dir=args.vector,
        probe_dir=args.probe,
        eraser_dir=args.eraser,
        fv_result=args.fv,
        relation_result=args.relation,
    )
    print(f"wrote {path}")
    return 0
