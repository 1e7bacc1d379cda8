"""`mechscope fv MODEL --task NAME|FILE`: fit a function vector (heads, insertion layer,
accuracies, prompt compression); `mechscope fv apply MODEL PROMPT --vector DIR`: the next
token with and without a saved vector (the positionals come together, before the options:
argparse cannot split them). `mechscope relation MODEL --samples FILE
--subject-site S --object-site O`: fit a linear relational embedding and measure it.
Maps onto `mechscope.incontext`; no science here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import MechscopeError


def configure_fv(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "model", help="hub id, local folder or zoo:NAME (e.g. zoo:icl); or `apply` (then MODEL PROMPT --vector DIR)"
    )
    parser.add_argument("prompt", nargs="*", help="with `apply`: the model, then the prompt to run")
    parser.add_argument("--task", help="built-in task name (e.g. icl/successor) or a .jsonl/.csv file of pairs")
    parser.add_argument("--heads", type=int, default=10, help="top heads whose mean outputs are summed (default 10)")
    parser.add_argument("--shots", type=int, default=5, help="demonstrations per prompt (default 5)")
    parser.add_argument("--prompts", type=int, default=100, help="k-shot prompts for the means and effects")
    parser.add_argument("--layer", type=int, help="insertion layer (default: the best one, searched)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompts and the held-out split")
    parser.add_argument("--vector", metavar="DIR", help="with `apply`: a saved function vector")
    parser.add_argument("--scale", type=float, default=1.0, help="with `apply`: multiply the vector by this")
    parser.add_argument("--save", metavar="DIR", help="save the function vector (cfg.json + tensors) here")
    parser.add_argument("--save-result", metavar="DIR", help="save the whole result (effects, accuracies) here")
    parser.add_argument("--plots", metavar="DIR", help="write the indirect-effect and layer figures here")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _write_outputs(args, result, artifact, plot_name: str) -> dict:
    """The result's summary, after saving what --save (the applied `artifact()`), --save-result
    (the whole result) and --plots (its figure, as `plot_name`) ask for; their paths added."""
    summary = result.summary()
    if args.save:
        summary["saved"] = str(artifact().save(args.save))
    if args.save_result:
        summary["result"] = str(result.save(args.save_result))
    if args.plots:
        summary["plot"] = str(_write_plot(result.plot(), args.plots, plot_name))
    return summary


def _write_plot(fig, folder: str, name: str) -> Path:
    from ..io import make_folder, write_figure

    return write_figure(make_folder(folder) / name, fig)


def execute_fv(args: argparse.Namespace) -> int:
    if args.model == "apply":
        return _apply(args)
    if args.prompt:
        raise MechscopeError(f"unexpected arguments {args.prompt}: `mechscope fv MODEL --task NAME`")
    if not args.task:
        raise MechscopeError("give --task NAME|FILE (e.g. --task icl/successor, or a .jsonl of input/output pairs)")
    from ..incontext import function_vector
    from ..models.loading import load

    model = load(args.model)
    result = function_vector(
        model, args.task, n_heads=args.heads, shots=args.shots, n_prompts=args.prompts, layer=args.layer, seed=args.seed
    )
    summary = _write_outputs(args, result, result.vector_artifact, f"fv_{result.task.replace('/', '_')}.png")
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    heads = ", ".join(f"L{lay}H{h} {float(result.effects[lay, h]):+.3f}" for lay, h in result.heads)
    print(f"function vector of {result.task} on {result.model} (held-out pairs, greedy top-1):")
    print(f"  heads (indirect effect): {heads}")
    print(f"  inserted before block {result.layer}; accuracy by layer: {summary['accuracy_by_layer']}")
    print(f"  zero-shot {result.zero_shot_accuracy:.3f} -> with FV {result.fv_accuracy:.3f}")
    print(f"  {result.shots}-shot {result.icl_accuracy:.3f}")
    print(
        f"  prompt compression: {result.tokens_saved:.1f} tokens replaced, {result.accuracy_kept:.0f}% of the "
        "k-shot accuracy kept"
    )
    for key, what in (("saved", "the linear relation"), ("result", "the result"), ("plot", "the figure")):
        if key in summary:
            print(f"wrote {what} to {summary[key]}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from ..incontext import FunctionVector
    from ..models.loading import load
    from ..tokens import decode

    if len(args.prompt) != 2 or not args.vector:
        raise MechscopeError("usage: mechscope fv apply MODEL PROMPT --vector DIR")
    model = load(args.prompt[0])
    fv = FunctionVector.load(args.vector)
    if fv.vector.shape[-1] != model.dims.d_model or fv.layer >= model.dims.n_layers:
        raise MechscopeError(f"the vector in {args.vector} was made for {fv.model}, which does not fit {model.name}")
    rows = {}
    for label, edits in (("without", []), ("with", [fv.edit(args.scale)])):
        logits = model.run(args.prompt[1], edits=edits).logits[0, -1].float()
        top = logits.softmax(-1).topk(5)
        rows[label] = [(decode(model, int(i)), round(float(p), 4)) for p, i in zip(top.values, top.indices)]
    if args.json:
        print(json.dumps({"task": fv.task, "layer": fv.layer, "top": rows}, indent=2, ensure_ascii=False))
        return 0
    for label, top in rows.items():
        print(f"{label} the {fv.task} vector: " + ", ".join(f"{t!r} {p:.3f}" for t, p in top))
    return 0


def configure_relation(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="hub id, local folder or zoo:NAME")
    parser.add_argument(
        "--samples", required=True, help='JSONL file: {"prompt": ..., "subject": ...} per line (subject in prompt)'
    )
    parser.add_argument("--subject-site", required=True, help="e.g. blocks.1.hook_resid_post (at the subject)")
    parser.add_argument("--object-site", required=True, help="e.g. blocks.5.hook_resid_post (at the last token)")
    parser.add_argument("--beta", type=float, default=1.0, help="scale of the mean Jacobian (default 1)")
    parser.add_argument("--save", metavar="DIR", help="save the linear relation (cfg.json + tensors) here")
    parser.add_argument("--save-result", metavar="DIR", help="save the whole result (sweeps, measures) here")
    parser.add_argument("--plots", metavar="DIR", help="write the β and rank sweep figure here")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def read_samples(path: str) -> tuple[list[str], list[str]]:
    file = Path(path)
    if not file.is_file():
        raise MechscopeError(f"samples file {path} does not exist: give a JSONL file of prompt/subject rows")
    try:
        rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MechscopeError(f"samples file {path} is not JSONL ({err})") from None
    if not rows or any(not isinstance(r, dict) or "prompt" not in r or "subject" not in r for r in rows):
        raise MechscopeError(f"samples file {path}: every line needs a 'prompt' and a 'subject'")
    return [str(r["prompt"]) for r in rows], [str(r["subject"]) for r in rows]


def execute_relation(args: argparse.Namespace) -> int:
    from ..incontext import relation
    from ..models.loading import load

    prompts, subjects = read_samples(args.samples)
    model = load(args.model)
    result = relation(
        model, prompts, subjects, args.subject_site, args.object_site, name=Path(args.samples).stem, beta=args.beta
    )
    summary = _write_outputs(args, result, result.relation_map, f"relation_{result.name}.png")
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"linear relation {result.name} on {result.model}: {result.subject_site} -> {result.object_site}")
    print(
        f"  faithfulness {result.faithfulness:.3f} (β={result.beta:g}; most frequent object: {result.baseline:.3f}), "
        f"{result.n_fit} fitting / {result.n_test} held-out samples"
    )
    print(f"  causality {result.causality:.3f} at rank {result.rank}")
    for key, what in (("saved", "the linear relation"), ("result", "the result"), ("plot", "the figure")):
        if key in summary:
            print(f"wrote {what} to {summary[key]}")
    return 0
