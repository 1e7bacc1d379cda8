"""`mechscope probe train|eval`, `mechscope confidence train|score`, `mechscope erase fit|eval`:
surfaces of `mechscope.concepts` (no science here).

--data is a .csv/.jsonl file (texts in --text-column, per-text labels in the column named
by --labels), or Python/text files (a file, a folder of *.py, or a glob) labelled with
--labels tokenize (the Python token kind of every token)."""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from ..errors import MechscopeError
from .printing import print_result

SOURCE = "source.json"
"""Written beside a probe sweep or eraser: where its data and labels came from (for eval)."""


# Data


def read_data(data: str, labels: str | None, text_column: str) -> tuple[list[str], object]:
    """Texts and labels (a list, or the tokenize labeller) from --data and --labels."""
    from ..concepts import python_token_kinds, read_table

    path = Path(data)
    if path.suffix.lower() in (".csv", ".jsonl", ".json"):
        if labels in (None, "tokenize"):
            texts, _ = read_table(path, text=text_column, label=text_column)
            return texts, python_token_kinds if labels == "tokenize" else None
        return read_table(path, text=text_column, label=labels)
    files = sorted(path.glob("**/*.py")) if path.is_dir() else [Path(p) for p in sorted(glob.glob(data))]
    files = [f for f in files if f.is_file()]
    if not files:
        raise MechscopeError(f"no data at '{data}': give a .csv/.jsonl file, a file, a folder of .py files or a glob")
    if labels not in (None, "tokenize"):
        raise MechscopeError(f"--labels {labels!r} names a column, but '{data}' is not a .csv/.jsonl file")
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    return texts, python_token_kinds if labels == "tokenize" else None


def _data_args(p: argparse.ArgumentParser, labels: bool = True) -> None:
    p.add_argument(
        "--data", required=True, help="a .csv/.jsonl file, a text/.py file, a folder of .py files, or a glob"
    )
    if labels:
        p.add_argument(
            "--labels", required=True, help="the label column of a .csv/.jsonl file, or 'tokenize' (Python token kinds)"
        )
    p.add_argument("--text-column", default="text", help="the text column of a .csv/.jsonl file")
    p.add_argument("--max-texts", type=int, help="use only the first N texts")


def _texts(args, labels: bool = True):
    texts, lab = read_data(args.data, getattr(args, "labels", None), args.text_column)
    if args.max_texts:
        texts = texts[: args.max_texts]
        lab = lab[: args.max_texts] if isinstance(lab, list) else lab
    if labels and lab is None:
        raise MechscopeError("give --labels: a column name, or 'tokenize'")
    return texts, lab


def float_list(text: str) -> tuple[float, ...]:
    """'0.01,0.1' -> (0.01, 0.1) (argparse type)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--l2", type=float_list, help="L2 strengths to cross-validate, e.g. 0.001,0.01,0.1 (default 1e-4..1)"
    )
    p.add_argument("--min-steps", type=int, help="fewest optimiser steps per probe (default 300)")


def _fit_options(args) -> dict:
    return {k: v for k, v in (("l2", args.l2), ("min_steps", args.min_steps)) if v is not None}


def _write_source(out: Path, args, model_name: str) -> None:
    from ..io import write_json

    keys = ("data", "labels", "text_column", "max_texts")
    write_json(out / SOURCE, {"model": model_name, **{k: getattr(args, k, None) for k in keys}})


def _emit(result: dict, as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(title)
    print_result(result)


# probe


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="probe_cmd", required=True)
    t = sub.add_parser("train", help="a probe per site (held-out accuracy, control task, selectivity)")
    t.add_argument("model", help="hub id, local folder, or zoo:NAME")
    _data_args(t)
    t.add_argument("--sites", default="blocks.*.hook_resid_post", help="site names or a glob")
    t.add_argument("--out", required=True, help="folder for the probes (one per site) and sweep.json")
    t.add_argument("--kind", choices=("logistic", "linear", "mlp1"), default="logistic", help="probe family")
    t.add_argument("--control", action="store_true", help="also train control tasks and report selectivity")
    _fit_args(t)
    t.add_argument("--cache", help="write the activations to this on-disk cache folder instead of memory")
    t.add_argument("--plot", help="write accuracy (and selectivity) per site to this image file")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    e = sub.add_parser("eval", help="accuracy of saved probes on other data")
    e.add_argument("dir", help="a folder written by `mechscope probe train`")
    _data_args(e, labels=False)
    e.add_argument("--labels", help="as at training (default: what the probes were trained with)")
    e.add_argument("--json", action="store_true", help="machine-readable output")


def execute(args: argparse.Namespace) -> int:
    return _probe_train(args) if args.probe_cmd == "train" else _probe_eval(args)


def _probe_train(args) -> int:
    from ..concepts import collect, probe_layers
    from ..models.loading import load

    model = load(args.model)
    texts, labels = _texts(args)
    data = collect(model, texts, labels, args.sites, folder=args.cache, progress=True)
    sweep = probe_layers(data, kind=args.kind, control=args.control, **_fit_options(args))
    out = sweep.save(args.out)
    _write_source(out, args, model.name)
    if args.plot:
        from ..io import write_figure

        write_figure(Path(args.plot), sweep.plot())
    result = {"model": model.name, "rows": len(data), "classes": list(data.classes), "majority": sweep.majority}
    result["sites"] = {r.pop("site"): r for r in sweep.table()}
    _emit({**result, "out": str(out)}, args.json, f"probes of {model.name} (held-out accuracy per site):")
    return 0


def _probe_eval(args) -> int:
    import torch

    from ..concepts import ProbeSweep, collect
    from ..io import read_json
    from ..models.loading import load

    sweep = ProbeSweep.load(args.dir)
    source = read_json(Path(args.dir) / SOURCE) if (Path(args.dir) / SOURCE).is_file() else {}
    args.labels = args.labels or source.get("labels")
    model = load(sweep.probes[0].model or source.get("model", ""))
    for p in sweep.probes:
        p.check(model)
    texts, labels = _texts(args)
    data = collect(model, texts, labels, sweep.sites)
    result: dict = {"model": model.name, "rows": len(data), "majority": data.majority, "sites": {}}
    for p in sweep.probes:
        known = [p.classes.index(c) if c in p.classes else -1 for c in data.classes]
        truth = torch.tensor(known)[data.labels]
        accuracy = float((p.predict(data.x(p.site)) == truth).float().mean())
        result["sites"][p.site] = {"accuracy": accuracy, "trained_test_accuracy": p.metrics.get("test_accuracy")}
    _emit(result, args.json, f"saved probes of {model.name} on {args.data}:")
    return 0


# confidence


def configure_confidence(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="confidence_cmd", required=True)
    t = sub.add_parser("train", help="train, pick the layer, calibrate and test a probe of 'the model is right'")
    t.add_argument("model", help="hub id, local folder, or zoo:NAME")
    _data_args(t, labels=False)
    t.add_argument("--out", required=True, help="folder for the confidence probe")
    t.add_argument("--sites", default="blocks.*.hook_resid_post", help="sites to choose from (on validation AUROC)")
    t.add_argument("--calibration", choices=("temperature", "isotonic", "none"), default="temperature")
    t.add_argument("--plot", help="write the test split's reliability diagrams to this image file")
    t.add_argument("--json", action="store_true", help="machine-readable output")
    s = sub.add_parser("score", help="calibrated probability that each next-token prediction is right")
    s.add_argument("dir", help="a folder written by `mechscope confidence train`")
    s.add_argument("prompt", help="text to score")
    s.add_argument("--json", action="store_true", help="machine-readable output")


def execute_confidence(args: argparse.Namespace) -> int:
    from ..concepts import ConfidenceProbe, score, train_confidence
    from ..models.loading import load

    if args.confidence_cmd == "train":
        model = load(args.model)
        texts, _ = _texts(args, labels=False)
        conf = train_confidence(model, texts, sites=args.sites, calibration=args.calibration, progress=True)
        conf.save(args.out)
        if args.plot:
            from ..io import write_figure

            write_figure(Path(args.plot), conf.plot())
        shown = {k: v for k, v in conf.metrics.items() if k != "reliability"}
        _emit({**shown, "out": args.out}, args.json, f"confidence probe of {model.name} (test split):")
        return 0
    conf = ConfidenceProbe.load(args.dir)
    model = load(conf.probe.model)
    scores = score(model, conf, args.prompt)
    rows = scores.tokens()
    if args.json:
        print(json.dumps({"site": conf.site, "tokens": [{"token": t, "p_right": p} for t, p in rows]}, indent=2))
        return 0
    print(f"P(the next-token prediction is right), read at {conf.site} ({conf.calibration} calibration):")
    for token, p in rows:
        print(f"  {p:6.3f}  {'#' * round(p * 20):<20}  {token!r}")
    return 0


# erase


def configure_erase(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="erase_cmd", required=True)
    f = sub.add_parser("fit", help="fit LEACE erasers at sites (in forward order, on erased upstream activations)")
    f.add_argument("model", help="hub id, local folder, or zoo:NAME")
    _data_args(f)
    f.add_argument("--sites", required=True, help="site names or a glob")
    f.add_argument("--out", required=True, help="folder for the eraser")
    f.add_argument("--method", choices=("leace", "orth"), default="leace", help="LEACE or orthogonal projection")
    f.add_argument("--json", action="store_true", help="machine-readable output")
    e = sub.add_parser("eval", help="what erasure costs: a fresh probe before/after and the model's loss")
    e.add_argument("dir", help="a folder written by `mechscope erase fit`")
    e.add_argument("--data", help="labelled data to evaluate on (default: the data it was fitted on)")
    e.add_argument("--labels", help="as at fitting (default: what it was fitted with)")
    e.add_argument("--text-column", default=None, help="the text column of a .csv/.jsonl file")
    e.add_argument("--max-texts", type=int, help="use only the first N texts")
    _fit_args(e)
    e.add_argument("--json", action="store_true", help="machine-readable output")


def execute_erase(args: argparse.Namespace) -> int:
    from ..concepts import Eraser, erasure_cost, fit_eraser
    from ..io import read_json
    from ..models.loading import load

    if args.erase_cmd == "fit":
        model = load(args.model)
        texts, labels = _texts(args)
        eraser = fit_eraser(model, texts, labels, args.sites, method=args.method, progress=True)
        out = eraser.save(args.out)
        _write_source(out, args, model.name)
        result = {"model": model.name, "sites": eraser.sites, "classes": list(eraser.classes), "out": str(out)}
        _emit(result, args.json, "fitted erasers:")
        return 0
    eraser = Eraser.load(args.dir)
    source = read_json(Path(args.dir) / SOURCE) if (Path(args.dir) / SOURCE).is_file() else {}
    for key in ("data", "labels", "text_column", "max_texts"):
        if getattr(args, key) is None:
            setattr(args, key, source.get(key) if key != "text_column" else source.get(key, "text"))
    if args.data is None:
        raise MechscopeError("give --data: this eraser does not say what it was fitted on")
    model = load(eraser.model)
    texts, labels = _texts(args)
    cost = erasure_cost(model, eraser, texts, labels, **_fit_options(args))
    _emit({"model": model.name, **cost}, args.json, f"cost of erasing {', '.join(eraser.classes)}:")
    return 0
