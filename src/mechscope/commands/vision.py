"""`mechscope attribute MODEL INPUT` and `mechscope sanity MODEL`: where a classifier looks and
whether the maps are about the model. Map one-to-one onto `mechscope.vision.attribute` and
`mechscope.vision.sanity`; no science here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import MechscopeError

METHOD_HELP = (
    "gradcam, hirescam, guided_gradcam, ig, saliency, shap (GradientSHAP), kernel_shap, lime, occlusion, "
    "rollout, grad_rollout (ViTs)"
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", default="gradcam", help=f"attribution method: {METHOD_HELP} (default gradcam)")
    parser.add_argument("--target", type=int, help="class to explain for every image (default: each one's prediction)")
    parser.add_argument("--site", help="Grad-CAM's layer, e.g. conv2.hook_out (default: last conv / ViT block norm)")
    parser.add_argument("--steps", type=int, default=50, help="Integrated Gradients' integration points (default 50)")
    parser.add_argument("--n-samples", type=int, help="samples for SHAP / LIME (default 32 GradientSHAP, 256 others)")
    parser.add_argument("--mask", choices=("patch", "superpixel"), default="patch", help="KernelSHAP/LIME features")
    parser.add_argument("--patch", type=int, help="cell size of patch features and occlusion's window (pixels)")
    parser.add_argument("--baseline", type=float, help="reference pixel value for IG/SHAP/occlusion (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random methods (default 0)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _kwargs(args) -> dict:
    return {
        "method": args.method,
        "site": args.site,
        "steps": args.steps,
        "n_samples": args.n_samples,
        "mask": args.mask,
        "patch": args.patch,
        "baseline": args.baseline,
        "seed": args.seed,
    }


def configure_attribute(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="zoo:NAME (e.g. zoo:digits, zoo:vit-digits), a model folder, or a language model")
    parser.add_argument(
        "input",
        help="images: .npy / .safetensors [N, C, H, W] model inputs, .png/.jpg, or digits:0-7 (zoo digits test "
        "images); for a language model, the prompt text (explained by IG over hook_embed)",
    )
    _common(parser)
    parser.add_argument("--token", help="language models: the next token to explain (default: the predicted one)")
    parser.add_argument("--plots", metavar="DIR", help="write the overlay figure into this folder")
    parser.add_argument("--save", metavar="DIR", help="save the result (cfg.json + tensors.safetensors) to this folder")
    return parser


def _load(name: str):
    from ..models.loading import load

    return load(name)


def execute_attribute(args: argparse.Namespace) -> int:
    from ..model import Model
    from ..vision import attribute
    from ..vision.images import read_images

    model = _load(args.model)
    if isinstance(model, Model):
        result = attribute(model, args.input, args.token, method=args.method, steps=args.steps)
    else:
        result = attribute(model, read_images(args.input), args.target, **_kwargs(args))
    plots = [str(_figure(result.plot(), Path(args.plots) / f"attribution_{result.method}.png"))] if args.plots else []
    if args.save:
        result.save(args.save)
    rows = _rows(result)
    if args.json:
        print(json.dumps({"model": result.model_name, "method": result.method, "site": result.site, "inputs": rows,
                          "plots": plots, "saved": args.save}, indent=2))  # fmt: skip
        return 0
    print(f"{result.method} on {result.model_name}" + (f" at {result.site}" if result.site else ""))
    for row in rows:
        gap = f", completeness gap {row['completeness']:.2e}" if row.get("completeness") is not None else ""
        peak = f"peak at {row['peak']}" if "peak" in row else ""
        print(f"  input {row['input']}: target {row['target']}, |map| sum {row['abs_mass']:.4g}, {peak}{gap}")
    if result.tokens is not None:
        print("  " + "  ".join(f"{t!r}:{v:+.3f}" for t, v in zip(result.tokens, result.maps[0].tolist())))
    for path in plots + ([args.save] if args.save else []):
        print(f"wrote {path}")
    return 0


def _rows(result) -> list[dict]:
    completeness = result.completeness
    rows = []
    for i in range(len(result.target)):
        row: dict[str, Any] = {
            "input": i,
            "target": int(result.target[i]),
            "abs_mass": float(result.maps[i].abs().sum()),
        }
        if result.tokens is None:
            flat = int(result.maps[i].flatten().argmax())
            row["peak"] = [flat // result.maps.shape[-1], flat % result.maps.shape[-1]]
        else:
            row["tokens"], row["scores"] = result.tokens, result.maps[i].tolist()
        row["completeness"] = None if completeness is None else float(completeness[i])
        if result.tokens is None:
            row["map"] = [[round(v, 6) for v in r] for r in result.maps[i].tolist()]
        rows.append(row)
    return rows


def _figure(fig, path: Path) -> Path:
    from ..io import write_figure

    return write_figure(path, fig)


def configure_sanity(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="an image classifier: zoo:digits, zoo:vit-digits or a model folder")
    parser.add_argument(
        "--inputs", default="digits:0-15", help="images as for `attribute` (default digits:0-15, zoo digits test set)"
    )
    _common(parser)
    parser.add_argument(
        "--labels",
        metavar="N",
        type=int,
        help="also run label randomisation: retrain on N shuffled digits training labels (zoo digit models)",
    )
    parser.add_argument("--label-epochs", type=int, default=20, help="epochs of the random-label retrain (default 20)")
    parser.add_argument("--threshold", type=float, default=0.5, help="randomisation passes below this Spearman")
    parser.add_argument("--no-deletion", action="store_true", help="skip the deletion/insertion curves")
    parser.add_argument("--batch-size", type=int, help="images per attribution call (default: all at once)")
    parser.add_argument("--plots", metavar="DIR", help="write the cascade and deletion/insertion figures here")
    parser.add_argument("--save", metavar="DIR", help="save the report (cfg.json + tensors.safetensors) here")
    return parser


def execute_sanity(args: argparse.Namespace) -> int:
    from ..model import Model
    from ..vision import sanity
    from ..vision.images import digits_split, read_images

    model = _load(args.model)
    if isinstance(model, Model):
        raise MechscopeError(f"{args.model} is a language model: sanity checks run on image classifiers")
    if args.labels is not None and args.labels < 10:
        raise MechscopeError(f"--labels needs at least 10 training images, got {args.labels}")
    labels = digits_split(train=True, n=args.labels) if args.labels else None
    kwargs = {k: v for k, v in _kwargs(args).items() if k != "method"}
    report = sanity(
        model, args.method, read_images(args.inputs), args.target, labels=labels, label_epochs=args.label_epochs,
        deletion=not args.no_deletion, threshold=args.threshold, batch_size=args.batch_size, progress=True, **kwargs,
    )  # fmt: skip
    plots = []
    if args.plots:
        plots.append(str(_figure(report.plot(), Path(args.plots) / f"sanity_{report.method}_cascade.png")))
        if report.deletion_curve is not None:
            plots.append(str(_figure(report.plot_curves(), Path(args.plots) / f"sanity_{report.method}_curves.png")))
    if args.save:
        report.save(args.save)
    if args.json:
        stages = dict(zip(report.stages, report.spearman.mean(1).tolist()))
        print(json.dumps({"model": report.model_name, "method": report.method, "passed": report.passed,
                          "checks": report.checks, "spearman_by_stage": stages, "plots": plots}, indent=2))  # fmt: skip
        return 0 if report.passed else 1
    print(f"sanity of {report.method} on {report.model_name} ({len(report.target)} images)")
    for name, rho in zip(report.stages, report.spearman.mean(1).tolist()):
        print(f"  randomised down to {name:<24} Spearman {rho:+.3f}")
    print("\n".join(report.lines()))
    for path in plots + ([args.save] if args.save else []):
        print(f"wrote {path}")
    return 0 if report.passed else 1
