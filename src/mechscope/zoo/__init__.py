"""The zoo: small models mechscope trains itself with deterministic recipes and ships,
so that every demo and test runs offline. `load("zoo:NAME")` reads them from here.

The zoo sits in the bottom layer (DESIGN §2) and imports no method. Where a zoo model's card
metrics or figures need a method's analysis (modadd's grokking measures, superposition's
feature geometry), that method registers an `Analysis` here (`mechscope.toys` does, when it
is imported); `train` and `plots` then run it.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import MechscopeError
from ..folders import recover_folder

WEIGHTS = Path(__file__).parent / "weights"
# name -> (module holding `train(out_dir, recipe) -> card`, its recipe dataclass)
RECIPES = {
    "pycode": ("mechscope.zoo.pycode", "PycodeRecipe"),
    "modadd": ("mechscope.zoo.modadd", "ModaddRecipe"),
    "superposition": ("mechscope.zoo.superposition", "SuperpositionRecipe"),
    "induction": ("mechscope.zoo.induction", "InductionRecipe"),
    "chain": ("mechscope.zoo.chain", "ChainRecipe"),
    "digits": ("mechscope.zoo.digits", "DigitsRecipe"),
    "icl": ("mechscope.zoo.icl", "IclRecipe"),
    "vit-digits": ("mechscope.zoo.vit_digits", "VitDigitsRecipe"),
}
DESCRIPTIONS = {
    "pycode": "Llama-architecture causal LM trained on the Python standard library (the default model)",
    "modadd": "1-layer transformer that groks (a + b) mod 113 (Nanda et al. 2023), with training snapshots",
    "superposition": "Toy Models of Superposition (Elhage et al. 2022): ReLU(W^T W x + b) across sparsities",
    "induction": "2-layer attention-only transformer with a previous-token and an induction head",
    "chain": "stacked attention heads: multi-hop variable binding, one layer per hop",
    "digits": "small CNN on scikit-learn's 8x8 digits",
    "icl": "small transformer doing hidden in-context tasks (successor, permutation, ...): function vectors",
    "vit-digits": "tiny ViT (2x2 patches + class token) on scikit-learn's 8x8 digits",
}


@dataclass(frozen=True)
class Analysis:
    """What a method package adds to a zoo model (registered with `register_analysis`)."""

    after_train: Callable[[Path], dict] | None = None
    """`after_train(folder) -> card`: add the method's measures to a freshly trained folder
    (its card.json, extra files) and return the completed card."""
    plots: Callable[[Path, Path], list[Path]] | None = None
    """`plots(folder, out_dir) -> [png paths]`: the model's figures, drawn by the method."""
    monitor: Callable[[Any, Any], dict] | None = None
    """`monitor(model, tokens) -> {metric: value}`: the method's measures of a model while
    it trains (the recipe logs them in its curve; weights do not depend on them)."""


ANALYSES: dict[str, Analysis] = {}
"""name -> the `Analysis` a method package registered for that zoo model."""


def register_analysis(name: str, analysis: Analysis) -> None:
    """Let `train` and `plots` run a method's analysis of zoo model `name` (called by the
    method's package at import: the arrow points down, from the method to the zoo)."""
    _check(name)
    ANALYSES[name] = analysis


def names() -> list[str]:
    return sorted(RECIPES)


def _check(name: str) -> None:
    if name not in RECIPES:
        raise MechscopeError(f"unknown zoo model '{name}': known ones are {', '.join(names())}")


def zoo_path(name: str) -> Path:
    """The shipped Hugging Face folder of a zoo model."""
    _check(name)
    path = recover_folder(WEIGHTS / name)  # a retrain killed mid-replacement leaves the old folder aside
    if not ((path / "config.json").is_file() or (path / "cfg.json").is_file()):
        raise MechscopeError(f"zoo model '{name}' has no weights in {path}: run `mechscope zoo train {name}`")
    return path


def snapshot_file(name: str) -> Path | None:
    """The weights of training snapshot `NAME@STEP` (`load("zoo:modadd@1021")`), kept in the
    zoo folder as snapshots/step_NNNNNN/model.safetensors beside the final model's config;
    None for a plain NAME."""
    base, at, step = name.partition("@")
    if not at:
        return None
    folder = zoo_path(base) / "snapshots"
    steps = {
        int(p.parent.name.removeprefix("step_")): p
        for p in sorted(folder.glob("step_*/model.safetensors"))
        if p.parent.name.removeprefix("step_").isdigit()
    }
    if not steps:
        raise MechscopeError(f"zoo model '{base}' keeps no training snapshots: load zoo:{base}")
    if not step.isdigit() or int(step) not in steps:
        raise MechscopeError(f"zoo:{base} has no snapshot at step {step!r}: choose one of {', '.join(map(str, steps))}")
    return steps[int(step)]


def card(name: str) -> dict:
    """The model card (recipe, metrics, training time) of a shipped zoo model."""
    path = zoo_path(name) / "card.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _module(name: str):
    _check(name)
    return importlib.import_module(RECIPES[name][0])


def plots(name: str, out_dir: Path) -> list[Path]:
    """Write the zoo model's figures (the paper's plots, from the shipped weights) into out_dir."""
    module = _module(name)
    analysis = ANALYSES.get(name)
    draw = analysis.plots if analysis is not None and analysis.plots else getattr(module, "plots", None)
    if draw is None:
        raise MechscopeError(
            f"zoo model '{name}' has no figures of its own (or they are drawn by a method package "
            "that is not loaded: `import mechscope.toys` first); its card: `mechscope zoo info "
            f"{name}`"
        )
    return list(draw(zoo_path(name), Path(out_dir)))


def train(name: str, out_dir: Path | None = None, *, seed: int = 0) -> dict:
    """Train a zoo model with its deterministic recipe, then run its registered analysis
    (if any) on the new folder; returns the model card."""
    module = _module(name)
    recipe = dataclasses.replace(getattr(module, RECIPES[name][1])(), seed=seed)
    from ..io import folder_lock

    # an unwritable out, or one that another job is writing, fails before training
    with folder_lock(Path(out_dir) if out_dir else WEIGHTS / name) as folder:
        card = module.train(folder, recipe)
        analysis = ANALYSES.get(name)
        return analysis.after_train(folder) if analysis is not None and analysis.after_train else card


def check(name: str, folder: Path) -> list:
    """Compare the card of a retrained folder with the shipped card, within the tolerances
    the shipped card states: one `checks.Check` per published measure."""
    from .checks import COMPARISONS

    _check(name)
    path = Path(folder) / "card.json"
    if not path.is_file():
        raise MechscopeError(
            f"{folder} holds no card.json: train into it first (`mechscope zoo train {name} --out {folder}`)"
        )
    if Path(folder).resolve() == (WEIGHTS / name).resolve():
        raise MechscopeError(f"{folder} is the shipped folder itself: retrain into another one with --out")
    from ..io import read_json

    try:
        return COMPARISONS[name](card(name), read_json(path))
    except (KeyError, TypeError) as exc:
        raise MechscopeError(
            f"{path} is not a card of the current '{name}' recipe (missing {exc}): retrain it"
        ) from None
