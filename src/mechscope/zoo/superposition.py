"""`zoo:superposition`: Toy Models of Superposition (Elhage et al. 2022), three experiments.

Each toy model reconstructs sparse features through a bottleneck, ``x' = ReLU(WᵀWx + b)``,
with many instances (each its own feature density 1 - S and importance) trained together
as one batched model. The shipped folder holds all three experiments in one module
(`SuperpositionSuite`), which routes an input to the experiment whose
``(instance, feature)`` shape it has:

- ``pentagon``: n=5 features in m=2 dimensions, importance 0.9^i, across sparsities S;
  dense: only the 2 most important features, sparse: all 5 on a pentagon;
- ``phase``: n=2 in m=1 over a grid of (importance of feature 2, density 1 - S), the
  phase diagram of "feature 1 only" / "antipodal superposition" / "feature 2 only";
- ``dimensionality``: n=200 in m=20, uniform importance, across sparsities; the dimensions
  per feature D* = m/‖W‖²_F stick at 1/2 (antipodal pairs) over a range of sparsity.

Sites: ``{experiment}.hidden.hook_out`` (h = Wx, ``[batch, instance, m]``),
``{experiment}.relu.hook_in`` (WᵀWx + b) and ``{experiment}.relu.hook_out`` (x').
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mechscope.errors import MechscopeError
from mechscope.zoo.storage import register_module_class, save_module_folder

logger = logging.getLogger(__name__)

_SMALL = 16
"""Models with d_hidden * n_features up to this compute by broadcasting instead of einsum."""


class ToyModelOfSuperposition(nn.Module):
    """``n_instances`` independent toy models ReLU(WᵀWx + b), batched over an instance axis.

    ``W`` is ``[instance, d_hidden, n_features]`` (feature i is the column ``W[k, :, i]``);
    the buffers ``importance [instance, n_features]`` and ``feature_probability [instance]``
    (= 1 - S) record the data each instance was trained on.
    """

    importance: Tensor  # buffers (register_buffer in __init__)
    feature_probability: Tensor

    def __init__(self, n_instances: int, n_features: int, d_hidden: int):
        super().__init__()
        self.n_instances, self.n_features, self.d_hidden = n_instances, n_features, d_hidden
        self.W = nn.Parameter(torch.zeros(n_instances, d_hidden, n_features))
        self.b_final = nn.Parameter(torch.zeros(n_instances, n_features))
        self.register_buffer("importance", torch.ones(n_instances, n_features))
        self.register_buffer("feature_probability", torch.ones(n_instances))
        self.hidden = nn.Identity()  # h = W x, [batch, instance, d_hidden]
        self.relu = nn.ReLU()  # input WᵀWx + b, output the reconstruction x'

    def forward(self, x: Tensor) -> Tensor:
        """``[batch, instance, n_features] -> [batch, instance, n_features]``."""
        if self.d_hidden * self.n_features <= _SMALL:  # broadcasting beats a bmm of tiny matrices
            h = self.hidden((x.unsqueeze(-2) * self.W).sum(-1))
            return self.relu((h.unsqueeze(-1) * self.W).sum(-2) + self.b_final)
        h = self.hidden(torch.einsum("bif,ihf->bih", x, self.W))
        return self.relu(torch.einsum("bih,ihf->bif", h, self.W) + self.b_final)

    def init_weights(self, generator: torch.Generator) -> None:
        """Xavier-normal W per instance (std sqrt(2/(m+n))), zero bias."""
        std = math.sqrt(2.0 / (self.d_hidden + self.n_features))
        with torch.no_grad():
            self.W.copy_(torch.randn(self.W.shape, generator=generator) * std)
            self.b_final.zero_()

    def sample(self, batch: int, generator: torch.Generator) -> Tensor:
        """Synthetic features ``[batch, instance, n_features]``: uniform in [0, 1], each present
        independently with its instance's ``feature_probability``, else 0."""
        # one uniform u per entry: present when u < p, and then u / p is uniform in [0, 1)
        u = torch.rand((batch, self.n_instances, self.n_features), generator=generator)
        p = self.feature_probability[:, None]
        return torch.where(u < p, u / p, torch.zeros(()))

    def loss(self, x: Tensor, out: Tensor) -> Tensor:
        """Importance-weighted squared error, mean over the batch: ``[instance]``."""
        return (self.importance * (x - out).square()).sum(-1).mean(0)


@register_module_class("SuperpositionSuite")
class SuperpositionSuite(nn.Module):
    """Several `ToyModelOfSuperposition` experiments in one module (the shipped folder).

    ``experiments`` maps a name to ``[n_instances, n_features, d_hidden]``; ``forward(x)``
    runs the experiment whose ``(n_instances, n_features)`` equals ``x.shape[-2:]``.
    """

    def __init__(self, experiments: dict[str, list[int]]):
        super().__init__()
        self.shapes = {name: tuple(shape) for name, shape in experiments.items()}
        for name, (n_inst, n_feat, d_hidden) in self.shapes.items():
            self.add_module(name, ToyModelOfSuperposition(n_inst, n_feat, d_hidden))

    def experiment(self, name: str) -> ToyModelOfSuperposition:
        if name not in self.shapes:
            raise MechscopeError(f"no experiment '{name}': this suite has {', '.join(self.shapes)}")
        return getattr(self, name)

    def forward(self, x: Tensor) -> Tensor:
        for name, (n_inst, n_feat, _) in self.shapes.items():
            if tuple(x.shape[-2:]) == (n_inst, n_feat):
                return getattr(self, name)(x)
        known = ", ".join(f"{k} [batch, {s[0]}, {s[1]}]" for k, s in self.shapes.items())
        raise MechscopeError(f"input shaped {tuple(x.shape)} fits no experiment: pass {known}")


@dataclass(frozen=True)
class SuperpositionRecipe:
    """Everything that determines the trained `zoo:superposition` weights."""

    seed: int = 0
    """Seeds the weight init and the synthetic data of every experiment."""
    steps: int = 6000
    """Adam steps per experiment."""
    batch_size: int = 1024
    """Synthetic samples per step of the pentagon and phase experiments (shared by all instances)."""
    lr: float = 1e-3
    """Peak Adam learning rate."""
    final_lr_ratio: float = 0.05
    """Learning rate at the last step as a fraction of ``lr`` (cosine decay, no warmup)."""
    eval_batch: int = 65536
    """Samples of the fixed evaluation batch that picks the best restart and scores the card."""
    restarts: int = 4
    """Inits trained per pentagon / phase instance; the one with the lowest eval loss is kept."""
    pentagon_features: int = 5
    """Features n of the pentagon experiment."""
    pentagon_hidden: int = 2
    """Hidden dimensions m of the pentagon experiment."""
    importance_decay: float = 0.9
    """Feature i of the pentagon experiment has importance ``importance_decay ** i``."""
    pentagon_sparsities: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.97, 0.99, 0.999)
    """Sparsities S of the pentagon instances (features present with probability 1 - S)."""
    phase_grid: int = 12
    """Points per axis of the 2-in-1 phase diagram (grid x grid instances)."""
    phase_importance_range: tuple[float, float] = (0.1, 10.0)
    """Relative importance of feature 2 (feature 1 has 1), log-spaced over this range."""
    phase_density_range: tuple[float, float] = (0.01, 1.0)
    """Feature density 1 - S of the phase diagram, log-spaced over this range."""
    dim_features: int = 200
    """Features n of the dimensionality experiment (uniform importance)."""
    dim_hidden: int = 20
    """Hidden dimensions m of the dimensionality experiment."""
    dim_instances: int = 24
    """Sparsities of the dimensionality experiment, 1/(1 - S) log-spaced from 1."""
    dim_max_inverse_density: float = 30.0
    """Largest 1/(1 - S) of the dimensionality experiment."""
    dim_batch_size: int = 512
    """Synthetic samples per step of the dimensionality experiment (its cost is batch x n x m)."""
    dim_restarts: int = 1
    """Inits per dimensionality instance (the best kept); costly at n=200."""


@dataclass(frozen=True)
class _Setup:
    importance: Tensor  # [instance, n]
    density: Tensor  # [instance]
    d_hidden: int
    restarts: int
    batch_size: int


def _geomspace(lo: float, hi: float, n: int) -> Tensor:
    return torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64).float()


def setups(recipe: SuperpositionRecipe) -> dict[str, _Setup]:
    """The instances (importance, density) of each experiment."""
    n, g = recipe.pentagon_features, recipe.phase_grid
    pent_imp = (recipe.importance_decay ** torch.arange(n, dtype=torch.float64)).float()
    pent_density = 1.0 - torch.tensor(recipe.pentagon_sparsities, dtype=torch.float64).float()
    ratio = _geomspace(*recipe.phase_importance_range, g)
    density = _geomspace(*recipe.phase_density_range, g)
    # instance k = (density row k // g, importance column k % g)
    phase_imp = torch.stack([torch.ones(g * g), ratio.repeat(g)], dim=-1)
    inv = _geomspace(1.0, recipe.dim_max_inverse_density, recipe.dim_instances)
    return {
        "pentagon": _Setup(
            pent_imp.expand(len(pent_density), n).clone(),
            pent_density,
            recipe.pentagon_hidden,
            recipe.restarts,
            recipe.batch_size,
        ),
        "phase": _Setup(phase_imp, density.repeat_interleave(g), 1, recipe.restarts, recipe.batch_size),
        "dimensionality": _Setup(
            torch.ones(len(inv), recipe.dim_features),
            1.0 / inv,
            recipe.dim_hidden,
            recipe.dim_restarts,
            recipe.dim_batch_size,
        ),
    }


def _lr(step: int, recipe: SuperpositionRecipe) -> float:
    cos = 0.5 * (1 + math.cos(math.pi * step / max(1, recipe.steps - 1)))
    return recipe.lr * (recipe.final_lr_ratio + (1 - recipe.final_lr_ratio) * cos)


def _train_setup(
    name: str, setup: _Setup, recipe: SuperpositionRecipe, index: int, progress: bool
) -> tuple[ToyModelOfSuperposition, Tensor]:
    """Train ``restarts`` inits of every instance together; keep the best of each.

    Restarts see the same data (the batch for the instances is tiled), so the eval losses
    that choose among them are paired. Returns the model and its eval loss ``[instance]``.
    """
    n_inst, n = setup.importance.shape
    r = setup.restarts
    model = ToyModelOfSuperposition(r * n_inst, n, setup.d_hidden)
    model.importance.copy_(setup.importance.repeat(r, 1))
    model.feature_probability.copy_(setup.density.repeat(r))
    model.init_weights(torch.Generator().manual_seed(recipe.seed * 1000 + 2 * index))
    data_model = ToyModelOfSuperposition(n_inst, n, setup.d_hidden)
    data_model.feature_probability.copy_(setup.density)
    data = torch.Generator().manual_seed(recipe.seed * 1000 + 2 * index + 1)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    for step in tqdm(range(recipe.steps), desc=f"superposition/{name}", disable=not progress):
        for group in opt.param_groups:
            group["lr"] = _lr(step, recipe)
        x = data_model.sample(setup.batch_size, data).repeat(1, r, 1)
        loss = model.loss(x, model(x)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    losses = eval_loss(model, data_model, recipe.eval_batch, seed=10_000 + index)
    return _best_restart(model, losses.view(r, n_inst))


def eval_loss(
    model: ToyModelOfSuperposition, data_model: ToyModelOfSuperposition, samples: int, seed: int, chunk: int = 4096
) -> Tensor:
    """Mean loss ``[instance]`` of ``model`` on ``samples`` fixed samples drawn (in chunks) from
    ``data_model``'s distribution, tiled over ``model``'s restarts."""
    gen, r = torch.Generator().manual_seed(seed), model.n_instances // data_model.n_instances
    total: Tensor | float = 0.0
    with torch.no_grad():
        for start in range(0, samples, chunk):
            x = data_model.sample(min(chunk, samples - start), gen).repeat(1, r, 1)
            total = total + model.loss(x, model(x)) * len(x)
    return cast(Tensor, total / samples)  # a tensor whenever samples > 0


def _best_restart(model: ToyModelOfSuperposition, losses: Tensor) -> tuple[ToyModelOfSuperposition, Tensor]:
    """The instance-by-instance best restart, by eval loss ``[restart, instance]``."""
    n_inst = losses.shape[1]
    best = losses.argmin(0) * n_inst + torch.arange(n_inst)
    kept = ToyModelOfSuperposition(n_inst, model.n_features, model.d_hidden)
    state = {k: v[best] for k, v in model.state_dict().items()}
    kept.load_state_dict(state)
    return kept.eval(), losses.min(0).values


TOLERANCE = {
    "pentagon_feature_norm_abs": 0.1,
    "pentagon_n_represented_abs": 0,
    "phase_cells_differing_fraction": 0.1,
    "dim_star_abs": 0.05,
    "plateau_tolerance_of_one_half": 0.1,
}
"""How closely a retrain (other machine or torch build, same recipe) should match the card."""


def _rounded(t: Tensor, digits: int = 4) -> list:
    return torch.round(t.double(), decimals=digits).tolist()


def build(recipe: SuperpositionRecipe, progress: bool = False) -> tuple[SuperpositionSuite, dict]:
    """Train every experiment of the recipe; returns the suite and each one's eval loss."""
    plan = setups(recipe)
    suite = SuperpositionSuite({k: [len(s.density), s.importance.shape[1], s.d_hidden] for k, s in plan.items()})
    losses = {}
    for index, (name, setup) in enumerate(plan.items()):
        model, loss = _train_setup(name, setup, recipe, index, progress)
        suite.experiment(name).load_state_dict(model.state_dict())
        losses[name] = _rounded(loss, 6)
        logger.info("superposition/%s trained: mean eval loss %.4g", name, float(loss.mean()))
    return suite.eval(), losses


def train(out_dir: Path, recipe: SuperpositionRecipe = SuperpositionRecipe(), *, progress: bool = True) -> dict:
    """Train the three experiments; write the module folder with ``card.json`` and ``CARD.md``
    (atomically) into ``out_dir``; return the card. Its metrics are the eval losses; the
    feature-geometry metrics are the analysis `mechscope.toys` registers (`zoo.train` runs it)."""
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order, whatever the machine: reproducible bits
    try:
        suite, losses = build(recipe, progress)
    finally:
        torch.set_num_threads(threads)
    card = {
        "name": "superposition",
        "architecture": "SuperpositionSuite of ToyModelOfSuperposition: ReLU(W^T W x + b) per instance",
        "recipe": json.loads(json.dumps(dataclasses.asdict(recipe))),
        "experiments": {k: list(v) for k, v in suite.shapes.items()},
        "metrics": {"eval_loss": losses},
        "train_time_s": round(time.perf_counter() - start, 1),
        "software": {"torch": torch.__version__, "threads": 1},
        "tolerance": TOLERANCE,
    }
    kwargs = {"experiments": card["experiments"]}
    save_module_folder(
        suite, kwargs, Path(out_dir), {"card.json": json.dumps(card, indent=2) + "\n", "CARD.md": render_card(card)}
    )
    return card


def render_card(card: dict) -> str:
    """The human-readable model card (``CARD.md``); the experiments' sections need the
    feature-geometry metrics (added by the analysis), and say so when they are missing."""
    r, m = card["recipe"], card["metrics"]
    head = f"""# zoo:superposition

Toy Models of Superposition (Elhage et al. 2022): x' = ReLU(WᵀWx + b), features uniform in
[0, 1] present with probability 1 - S, importance-weighted MSE. Three batched experiments,
each instance trained {r["steps"]} Adam steps (lr {r["lr"]}, cosine to {r["final_lr_ratio"]}x,
batch {r["batch_size"]}, dimensionality {r["dim_batch_size"]}); pentagon and phase instances
keep the best of {r["restarts"]} inits by loss on {r["eval_batch"]} fixed samples.
Trained in {card["train_time_s"] / 60:.1f} min with torch {card["software"]["torch"]}.
"""
    tail = """
Sites: `{experiment}.hidden.hook_out`, `{experiment}.relu.hook_in|hook_out`; an input
`[batch, instance, n]` runs the experiment of that shape. Rebuild with
`mechscope zoo train superposition` (or `mechscope.zoo.train("superposition")`); a retrain
elsewhere should match `card.json` within its `tolerance`.
"""
    if "pentagon" not in m:
        return head + "\n(No feature-geometry metrics yet: `mechscope.zoo.train` adds them.)\n" + tail
    return head + _render_experiments(r, m) + tail


def _render_experiments(r: dict, m: dict) -> str:
    pent, dim = m["pentagon"], m["dimensionality"]
    rows = "\n".join(
        f"| {s:g} | {k} | {' '.join(f'{v:.2f}' for v in norms)} |"
        for s, k, norms in zip(pent["sparsity"], pent["n_represented"], pent["feature_norms"])
    )
    counts = ", ".join(f"{k}: {v}" for k, v in m["phase"]["counts"].items() if v)
    return f"""
## pentagon: n={r["pentagon_features"]}, m={r["pentagon_hidden"]}, importance {r["importance_decay"]}^i

| sparsity S | features with ‖W_i‖ > 0.5 | ‖W_i‖ (most important first) |
|---|---|---|
{rows}

## phase: n=2, m=1, {r["phase_grid"]}x{r["phase_grid"]} grid

{counts}

## dimensionality: n={r["dim_features"]}, m={r["dim_hidden"]}, uniform importance

D* = m/‖W‖²_F stays within 0.1 of 1/2 for {dim["plateau_n_points"]} consecutive sparsities,
1/(1-S) from {dim["plateau_inverse_density"][0]} to {dim["plateau_inverse_density"][1]}
(mean {dim["plateau_mean_dim_star"]}).
"""
