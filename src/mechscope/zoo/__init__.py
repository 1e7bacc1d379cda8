"""The zoo: small models mechscope trains itself with deterministic recipes and ships,
so that every demo and test runs offline. `load("zoo:NAME")` reads them from here."""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

from ..errors import MechscopeError

WEIGHTS = Path(__file__).parent / "weights"
# name -> (module holding `train(out_dir, recipe) -> card`, its recipe dataclass)
RECIPES = {"pycode": ("mechscope.zoo.pycode", "PycodeRecipe")}
DESCRIPTIONS = {"pycode": "Llama-architecture causal LM trained on the Python standard library (the default model)"}


def names() -> list[str]:
    return sorted(RECIPES)


def _check(name: str) -> None:
    if name not in RECIPES:
        raise MechscopeError(f"unknown zoo model '{name}': known ones are {', '.join(names())}")


def zoo_path(name: str) -> Path:
    """The shipped Hugging Face folder of a zoo model."""
    _check(name)
    path = WEIGHTS / name
    if not (path / "config.json").is_file():
        raise MechscopeError(f"zoo model '{name}' has no weights in {path}: run `mechscope zoo train {name}`")
    return path


def card(name: str) -> dict:
    """The model card (recipe, metrics, training time) of a shipped zoo model."""
    path = zoo_path(name) / "card.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def train(name: str, out_dir: Path | None = None, *, seed: int = 0) -> dict:
    """Train a zoo model with its deterministic recipe; returns the model card."""
    _check(name)
    module_name, recipe_name = RECIPES[name]
    module = importlib.import_module(module_name)
    recipe = dataclasses.replace(getattr(module, recipe_name)(), seed=seed)
    return module.train(Path(out_dir) if out_dir else WEIGHTS / name, recipe)
