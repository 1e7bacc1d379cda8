"""The `mechscope` command line. Each command maps onto a library call; no science here.

`main(argv)` returns an exit code, so tests call it directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .commands.arguments import int_list
from .errors import MechscopeError


def _info(args) -> int:
    from .models.loading import load
    info = load(args.model).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    sites = info.pop("sites")
    notes = info.pop("notes")
    for key, value in info.items():
        print(f"{key:>12}: {value}")
    for note in notes:
        print(f"{'note':>12}: {note}")
    print(f"\n{len(sites)} sites (TransformerLens names; blocks.* repeats per layer):")
    for name, dims in sites.items():
        if name.startswith("blocks.") and not name.startswith("blocks.0."):
            continue
        shape = ", ".join(d if s is None else f"{d}={s}" for d, s in dims.items())
        print(f"  {name.replace('blocks.0.', 'blocks.{l}.'):<34} [{shape}]")
    return 0


def _run(args) -> int:
    from .io import write_tensors
    from .models.loading import load
    if args.out and not args.record:
        raise MechscopeError(f"--out {args.out} would hold no activations: add --record GLOB (e.g. 'blocks.*.hook_resid_post')")
    model = load(args.model)
    run = model.run(args.prompt, record=args.record or [], positions=args.positions)
    top = run.top_tokens(args.top) if run.logits is not None else [[]]
    shapes = {name: list(value.shape) for name, value in run.cache.items()}
    if args.out:
        write_tensors(Path(args.out), dict(run.cache), {"model": model.name, "prompt": args.prompt})
    if args.json:
        print(json.dumps({"tokens": run.str_tokens(), "top_next": top[0], "recorded": shapes,
                          "out": args.out}, indent=2))
        return 0
    print(f"tokens ({len(run.str_tokens())}): {run.str_tokens()}")
    if top[0]:
        print("top next tokens: " + ", ".join(f"{t!r} {p:.3f}" for t, p in top[0]))
    for name, shape in shapes.items():
        print(f"  {name:<34} {shape}")
    if args.out:
        print(f"wrote {len(shapes)} activations to {args.out}")
    return 0


def _report(args) -> int:
    from .models.loading import load
    from .report import build_report
    path = build_report(load(args.model), args.prompt, Path(args.out), sae_dir=args.sae, crosscoder_dir=args.crosscoder)
    print(f"wrote {path}")
    return 0


def _zoo(args) -> int:
    from . import zoo
    if args.zoo_cmd == "list":
        for name in zoo.names():
            print(f"{name:<14} {zoo.DESCRIPTIONS.get(name, '')}")
    elif args.zoo_cmd == "info":
        print(json.dumps(zoo.card(args.name), indent=2))
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mechscope", description="A microscope for neural networks.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and loading details")
    p.add_argument("--device", help="where models run: cpu, cuda, cuda:N or auto (the GPU when there is one; "
                   "under torchrun this rank's); default $MECHSCOPE_DEVICE, else cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16", "float64"),
                   help="model weights' dtype; default $MECHSCOPE_DTYPE, else float32")
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="family, sizes and every site of a model")
    info.add_argument("model", help="hub id, local folder, or zoo:NAME (e.g. zoo:pycode)")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_info)

    run = sub.add_parser("run", help="one forward pass: top next tokens and recorded activations")
    run.add_argument("model")
    run.add_argument("prompt")
    run.add_argument("--record", action="append", metavar="GLOB", help="site name or glob to record (repeatable)")
    run.add_argument("--positions", type=int_list, help="record only these positions, e.g. -1 or 0,3,-1")
    run.add_argument("--top", type=int, default=5, help="how many next tokens to show")
    run.add_argument("--out", help="write the recorded activations to this .safetensors file")
    run.add_argument("--json", action="store_true")
    run.set_defaults(func=_run)

    report = sub.add_parser("report", help="write a self-contained HTML report")
    report.add_argument("model")
    report.add_argument("--prompt", help="text to run the model on (models that read text)")
    report.add_argument("--out", required=True, help="output folder (index.html goes there)")
    report.add_argument("--sae", metavar="DIR", help="a dictionary folder (from `mechscope sae train`) to show in the report")
    report.add_argument("--crosscoder", metavar="DIR",
                        help="a crosscoder folder (from `mechscope crosscoder train`) to show in the report")
    report.set_defaults(func=_report)

    _method_commands(sub)

    zoo = sub.add_parser("zoo", help="the bundled, project-trained models")
    zsub = zoo.add_subparsers(dest="zoo_cmd", required=True)
    zsub.add_parser("list", help="list zoo models")
    zinfo = zsub.add_parser("info", help="a zoo model's card")
    zinfo.add_argument("name")
    zinfo.add_argument("--plots", metavar="DIR", help="also write the model's figures (PNG) into DIR")
    ztrain = zsub.add_parser("train", help="train a zoo model with its deterministic recipe")
    ztrain.add_argument("name")
    ztrain.add_argument("--out", help="output folder (default: the package's zoo folder)")
    ztrain.add_argument("--seed", type=int, default=0)
    zcheck = zsub.add_parser("check", help="compare a retrained folder's card with the shipped card's tolerances")
    zcheck.add_argument("name")
    zcheck.add_argument("folder", help="the --out folder of `mechscope zoo train NAME`")
    zoo.set_defaults(func=_zoo)
    return p


def _method_commands(sub) -> None:
    """Commands whose parsers live with their methods (mechscope/commands/)."""
    from .commands import circuits, crosscoder, dla, heads, lens, patching, sae, structure, transcoder, tuned_lens
    table = [
        ("lens", "logit lens (or tuned lens) of a prompt: what each layer predicts", lens.configure, lens.execute),
        ("lens-train", "train a tuned lens on a local corpus (also: `mechscope lens train`)", tuned_lens.configure,
         tuned_lens.execute),
        ("dla", "direct logit attribution of a token (difference) to every head and MLP", dla.configure, dla.execute),
        ("heads", heads.HELP, heads.configure, heads.execute),
        ("attention-graph", "attention patterns as graphs: statistics vs random, communities, spectra",
         structure.configure_attention_graph, structure.execute_attention_graph),
        ("patch", patching.HELP_PATCH, patching.configure_patch, patching.execute_patch),
        ("trace", patching.HELP_TRACE, patching.configure_trace, patching.execute_trace),
        ("circuit", circuits.HELP, circuits.configure, circuits.execute),
        ("sae", sae.HELP, sae.configure, sae.execute),
        ("transcoder", transcoder.HELP, transcoder.configure, transcoder.execute),
        ("crosscoder", crosscoder.HELP, crosscoder.configure, crosscoder.execute),
        ("spectra", "singular-value spectra of every weight and OV/QK circuit (or of a fine-tune's update)",
         structure.configure_spectra, structure.execute_spectra),
    ]
    for name, help_text, configure, execute in table:
        command = sub.add_parser(name, help=help_text)
        configure(command)
        command.set_defaults(func=execute)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["lens", "train"]:  # `lens MODEL PROMPT` and `lens train MODEL` share a name
        argv = ["lens-train", *argv[2:]]
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # every command loads through models.loading.load, which reads these (one place, no plumbing);
    # restored afterwards, so that main() called in-process (tests) leaves nothing behind
    chosen = {"MECHSCOPE_DEVICE": args.device, "MECHSCOPE_DTYPE": args.dtype}
    before = {env: os.environ.get(env) for env, value in chosen.items() if value}
    os.environ.update({env: value for env, value in chosen.items() if value})
    try:
        if args.device:
            from .models.loading import resolve_device
            resolve_device(args.device)  # a device that does not exist fails before any work
        return args.func(args)
    except MechscopeError as err:
        print(f"mechscope: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    finally:
        for env, value in before.items():
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value


if __name__ == "__main__":
    sys.exit(main())
