"""The analyses of the zoo's toy-model folders: the card metrics and the paper's figures
that need this package's measures. `mechscope.toys` registers them with `mechscope.zoo`
(`zoo.train` / `zoo.plots` run them); the zoo itself never imports a method (DESIGN §2).

- modadd: grokking progress measures of the training snapshots (`curves.safetensors`), the
  card's `analysis` summary, and three figures (`modadd_*`).
- superposition: the pentagon / phase-diagram / dimensionality metrics of the card, and
  three figures (`superposition_*`).
- induction: the head detectors (`mechscope.heads`) score the model while it trains and
  draw the previous-token / induction heatmaps (`induction_*`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import cast

import torch
from torch import Tensor

from ..errors import MechscopeError
from ..io import write_figure, write_text
from ..zoo import induction as zoo_induction
from ..zoo import modadd as zoo_modadd
from ..zoo import superposition as zoo_superposition

# --- modadd (Nanda et al. 2023) ---


def _card(folder: Path) -> dict:
    path = Path(folder) / "card.json"
    if not path.is_file():
        raise MechscopeError(
            f"{folder} has no card.json: it is not a trained zoo folder; retrain it with `mechscope zoo train NAME`"
        )
    return json.loads(path.read_text())


def modadd_curves(folder: Path, *, progress: bool = False):
    """The grokking progress measures (`grokking.GrokkingCurves`) of a modadd folder's
    snapshots, on its own train/test split (from the card's recipe)."""
    from . import grokking

    recipe = _card(folder)["recipe"]
    split = zoo_modadd.data(recipe["p"], recipe["train_frac"], recipe["seed"])
    return grokking.grokking_curves(zoo_modadd.load_snapshots(folder), *split, progress=progress)


def load_modadd_curves(folder: Path):
    """The progress measures saved with the folder (``curves.safetensors``), else computed."""
    from .grokking import GrokkingCurves

    path = Path(folder) / "curves.safetensors"
    return GrokkingCurves.load(path) if path.is_file() else modadd_curves(folder)


def modadd_summary(curves) -> dict:
    """The card's summary of the progress measures at the last snapshot."""
    return {
        "key_frequencies": [int(k) for k in curves.key_freqs],
        "key_frequency_share": round(float(curves.key_share[-1]), 5),
        "restricted_loss": float(f"{float(curves.restricted_loss[-1]):.6g}"),
        "excluded_loss": float(f"{float(curves.excluded_loss[-1]):.6g}"),
        "gini_embed": round(float(curves.gini_embed[-1]), 4),
        "gini_neuron": round(float(curves.gini_neuron[-1]), 4),
        "phase_ends": dict(zip(("memorisation", "circuit_formation", "cleanup"), map(int, curves.phases))),
    }


def analyse_modadd(folder: Path, *, progress: bool = True) -> dict:
    """Add the progress measures to a freshly trained modadd folder: ``curves.safetensors``,
    the card's ``analysis`` and ``metrics.total_time_s`` (training + measures), and CARD.md.
    Returns the card."""
    folder, start = Path(folder), time.perf_counter()
    card = _card(folder)
    curves = modadd_curves(folder, progress=progress)
    curves.save(folder / "curves.safetensors")
    card["analysis"] = modadd_summary(curves)
    metrics = card["metrics"]
    metrics["total_time_s"] = round(
        metrics.get("total_time_s", metrics["train_time_s"]) + time.perf_counter() - start, 1
    )
    write_text(folder / "CARD.md", zoo_modadd.render_card(card))
    write_text(folder / "card.json", json.dumps(card, indent=1) + "\n")  # last: the card says it is complete
    return card


def modadd_plots(folder: Path, out_dir: Path) -> list[Path]:
    """The paper's figures from a modadd folder: progress measures over training, the loss
    history, and the embedding's Fourier norms. Returns the PNG paths."""
    from ..models.loading import load
    from .grokking_figures import plot_embedding_fourier, plot_history

    folder, out_dir = Path(folder), Path(out_dir)
    card = _card(folder)
    curves = load_modadd_curves(folder)
    figures = {
        "modadd_progress_measures.png": curves.plot(),
        "modadd_loss_history.png": plot_history(card["history"], card["history_columns"]),
        "modadd_embedding_fourier.png": plot_embedding_fourier(
            load(str(folder)), card["recipe"]["p"], [int(k) for k in curves.key_freqs]
        ),
    }
    return [write_figure(out_dir / name, fig, bbox_inches=None) for name, fig in figures.items()]


# --- superposition (Elhage et al. 2022) ---


def _rounded(t: Tensor, digits: int = 4) -> list:
    return torch.round(t.double(), decimals=digits).tolist()


def superposition_metrics(suite) -> dict:
    """The card's metrics of a `SuperpositionSuite`, from the weights and the buffers that
    record the data (importance, feature probability)."""
    from .superposition import (
        PHASES,
        FeatureGeometry,
        longest_plateau,
        two_in_one_phase,
    )

    pent, phase, dim = (suite.experiment(k) for k in ("pentagon", "phase", "dimensionality"))
    g_pent, g_dim = FeatureGeometry.of(pent.W), FeatureGeometry.of(dim.W)
    grid = int(round(math.sqrt(phase.n_instances)))
    phases = two_in_one_phase(phase.W.detach()).view(grid, grid)
    lo, hi = longest_plateau(g_dim.dim_star, 0.5, zoo_superposition.TOLERANCE["plateau_tolerance_of_one_half"])
    inv = 1.0 / dim.feature_probability
    return {
        "pentagon": {
            "sparsity": _rounded(1 - pent.feature_probability),
            "feature_norms": _rounded(g_pent.norms, 3),
            "n_represented": g_pent.n_represented().tolist(),
            "dim_star": _rounded(g_pent.dim_star, 3),
        },
        "phase": {
            "importance_of_feature_2": _rounded(phase.importance[:grid, 1]),
            "density": _rounded(phase.feature_probability[::grid]),
            "phases_rows_by_density": phases.tolist(),
            "phase_labels": list(PHASES),
            "counts": {PHASES[c]: int((phases == c).sum()) for c in range(len(PHASES))},
        },
        "dimensionality": {
            "inverse_density": _rounded(inv, 3),
            "dim_star": _rounded(g_dim.dim_star),
            "plateau_inverse_density": _rounded(inv[[lo, max(lo, hi - 1)]], 3),
            "plateau_n_points": hi - lo,
            "plateau_mean_dim_star": round(float(g_dim.dim_star[lo:hi].mean()), 4) if hi > lo else None,
        },
    }


def analyse_superposition(folder: Path) -> dict:
    """Add the feature-geometry metrics to a freshly trained superposition folder (card.json
    ``metrics``, CARD.md). Returns the card."""
    from ..zoo.storage import load_module_folder

    folder = Path(folder)
    card = _card(folder)
    card["metrics"] = {**superposition_metrics(load_module_folder(folder)), **card["metrics"]}
    write_text(folder / "CARD.md", zoo_superposition.render_card(card))
    write_text(folder / "card.json", json.dumps(card, indent=2) + "\n")
    return card


def superposition_plots(folder: Path, out_dir: Path) -> list[Path]:
    """Write the paper's three figures from the weights in ``folder`` as PNGs into ``out_dir``."""
    from ..zoo.storage import load_module_folder
    from ..zoo.superposition import SuperpositionSuite
    from . import superposition as ts

    suite = cast(SuperpositionSuite, load_module_folder(Path(folder)))
    pent, phase, dim = (suite.experiment(k) for k in ("pentagon", "phase", "dimensionality"))
    titles = [f"S = {1 - p:.3g}" for p in pent.feature_probability.tolist()]
    grid = int(round(math.sqrt(phase.n_instances)))
    figures = {
        "superposition_pentagon.png": ts.plot_feature_columns(pent.W, titles, pent.importance),
        "superposition_phase.png": ts.plot_phase_diagram(
            ts.two_in_one_phase(phase.W.detach()).view(grid, grid),
            phase.importance[:grid, 1],
            phase.feature_probability[::grid],
        ),
        "superposition_dimensionality.png": ts.plot_dimensionality(
            ts.FeatureGeometry.of(dim.W), dim.feature_probability
        ),
    }
    return [write_figure(Path(out_dir) / name, fig, bbox_inches=None) for name, fig in figures.items()]


# --- induction (Olsson et al. 2022) ---


def induction_head_scores(model, tokens: Tensor) -> dict:
    """Previous-token and induction scores of every head of a `zoo:induction` network on
    repeated sequences ``[BOS, r, r]``: the full matrices and the best layer-0 / last-layer head."""
    from ..heads import induction_scores, previous_token_scores
    from ..model import Model

    view = Model(model, name="induction")
    prev, ind = previous_token_scores(view, tokens).scores, induction_scores(view, tokens).scores
    return {
        "prev_token_scores": prev.tolist(),
        "induction_scores": ind.tolist(),
        "best_prev_token_l0": prev[0].max().item(),
        "best_induction_l1": ind[-1].max().item(),
    }


def induction_plots(folder: Path, out_dir: Path) -> list[Path]:
    """Head-score heatmaps, then the zoo's own figures (loss per position, training curve)."""
    from ..heads import induction_scores, previous_token_scores
    from ..model import Model
    from ..zoo.transformer import ToyTransformer

    folder, out_dir = Path(folder), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = zoo_induction.InductionRecipe(**_card(folder)["recipe"])
    view = Model(ToyTransformer.from_pretrained(folder).eval(), name="zoo:induction")
    tokens = zoo_induction.eval_tokens(recipe)
    figures = {
        "induction_previous_token_scores.png": previous_token_scores(view, tokens).plot(
            "previous-token score (zoo:induction)"
        ),
        "induction_induction_scores.png": induction_scores(view, tokens).plot("induction score (zoo:induction)"),
    }
    paths = [write_figure(out_dir / name, fig) for name, fig in figures.items()]
    return paths + zoo_induction.plots(folder, out_dir)
