"""`mechscope forensics BASE EDITED`: what an edit or a fine-tune changed, read from the
weights (`structure.edit_forensics`); EDITED may also be a peft LoRA adapter folder
(`structure.lora_forensics`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MechscopeError
from .structure import _finite, _save_figure


def configure(parser):
    parser.add_argument("base", help="the model before: hub id, local folder, or zoo:NAME")
    parser.add_argument(
        "edited", help="the model after (same architecture), or a peft LoRA adapter folder (adapter_config.json)"
    )
    parser.add_argument(
        "--corpus", metavar="F", help="text file or folder: corpus tokens to match the key of a rank-one update"
    )
    parser.add_argument(
        "--candidates",
        metavar="NAMES",
        help="candidate subjects, comma-separated, or @FILE with one per line (matched at each name's last token)",
    )
    parser.add_argument(
        "--template",
        action="append",
        dest="templates",
        metavar="T",
        help="a context for the candidates with {} for the name (repeatable; default: a few code contexts)",
    )
    parser.add_argument("--top", type=int, default=10, help="keys and tokens shown per rank-one update (default 10)")
    parser.add_argument(
        "--rtol", type=float, default=1e-5, help="noise floor rtol · (σ1(W) + σ1(ΔW)) for the rank (default 1e-5)"
    )
    parser.add_argument("--max-tokens", type=int, default=20_000, help="corpus tokens read (default 20000)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--plots", metavar="DIR", help="write the updates' spectra, key matches and promoted tokens (PNG)"
    )
    return parser


def _candidates(value: str | None) -> list[str] | None:
    if not value:
        return None
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise MechscopeError(f"no candidates file at {path}: give @FILE with one name per line")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = [n.strip() for n in value.split(",")]
    names = [n for n in names if n]
    if not names:
        raise MechscopeError("--candidates names no candidate: give names separated by commas, or @FILE")
    return names


def execute(args) -> int:
    from ..models.loading import load

    if args.top < 1:
        raise MechscopeError(f"--top must be at least 1, got {args.top}")
    base = load(args.base)
    if (Path(args.edited) / "adapter_config.json").is_file():
        return _lora(args, base)
    from ..structure import edit_forensics

    edited = load(args.edited)
    found = edit_forensics(
        base,
        edited,
        args.corpus,
        candidates=_candidates(args.candidates),
        templates=args.templates,
        rtol=args.rtol,
        top=args.top,
        max_tokens=args.max_tokens,
        progress=bool(getattr(args, "verbose", False)),
    )
    plots = _plots(found, Path(args.plots)) if args.plots else []
    if args.json:
        out = {"base": found.base, "edited": found.edited, "matrices": found.to_records()}
        print(json.dumps(_finite({**out, "readings": found.readings, "plots": plots}), indent=2))
        return 0
    _print(found, args.top)
    if plots:
        print(f"wrote {len(plots)} plots to {args.plots}")
    return 0


def _plots(found, out: Path) -> list[str]:
    written = [_save_figure(found.plot_spectra(), out / "spectra.png")]
    for name in found.readings:
        written.append(_save_figure(found.plot_keys(name), out / f"keys_{name}.png"))
        written.append(_save_figure(found.plot_promoted(name), out / f"promoted_{name}.png"))
    return [str(p) for p in written]


def _print(found, top: int) -> None:
    from ..structure._common import table

    changed = found.changed()
    print(f"{found.edited} - {found.base}: {len(changed)} of {len(found.rows)} matrices changed")
    if changed:
        rows = [found.row(n) for n in changed]
        print(table(rows, ["name", "shape", "rank", "relative_norm", "sigma_ratio", "noise_floor", "solver"]))
    for name, reading in found.readings.items():
        keys = ", ".join(f"{k['name']!r} {k['score']:.3g}" for k in reading["keys"][:top])
        print(f"\n{name} is rank one: key matches (response |uᵀk|): {keys}")
        if reading.get("corpus_keys"):
            tokens = ", ".join(f"{k['name']!r} {k['score']:.3g}" for k in reading["corpus_keys"][:top])
            print(f"corpus tokens: {tokens}")
        if reading["promoted"]:
            tokens = ", ".join(f"{t['token']!r} {t['score']:+.3g}" for t in reading["promoted"][:top])
            print(f"promotes (mean Δ log p through the later layers): {tokens}")


def _lora(args, base) -> int:
    from ..structure import lora_forensics
    from ..structure._common import table

    found = lora_forensics(base, args.edited, rtol=args.rtol)
    plots = [str(_save_figure(found.plot(), Path(args.plots) / "lora.png"))] if args.plots else []
    if args.json:
        print(json.dumps(_finite({"adapter": found.adapter, "modules": found.to_records(), "plots": plots}), indent=2))
        return 0
    print(f"LoRA adapter {found.adapter} on {base.name}: {len(found.rows)} modules")
    print(table(found.rows, ["name", "r", "rank", "rank_threshold", "relative_norm", "intruders"]))
    if plots:
        print(f"wrote {len(plots)} plots to {args.plots}")
    return 0
