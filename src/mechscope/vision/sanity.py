"""`sanity(model, method, inputs) -> SanityReport`: are a method's maps about the model?

Adebayo et al. (2018) showed that some saliency maps barely change when the model's weights
are randomised, so they cannot explain the model. This runs their two tests and two
faithfulness measures, and reports every one as passed or failed (never hidden):

- cascading parameter randomisation: layers re-initialised from the top down, cumulatively;
  Spearman rank correlation of each stage's maps with the original maps (|map| for signed
  methods). Two checks: the mean correlation once the output layer alone is randomised
  ('top-layer randomisation': a map of the class decision must already move), and after
  the last stage ('randomisation'), each below `threshold`.
- label randomisation (when `labels=(images, classes)` are given): the same architecture
  trained from scratch on shuffled labels; its maps should not match the real model's.
- deletion / insertion AUC (`faithfulness.py`) against the mean of random pixel orders.
- completeness (IG and other methods with a convergence gap): |sum attr - output diff| /
  |output diff| at most `completeness_tol`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import MechscopeError
from ..module_model import ModuleModel
from ..results import Saveable, pandas
from . import faithfulness, randomise
from .attribution import Attribution, attribute
from .inputs import as_image_model, check_images, forward_fn, targets_for

logger = logging.getLogger(__name__)


@dataclass
class SanityReport(Saveable):
    """The verdicts and the evidence behind them (maps per stage, correlations, curves)."""

    KIND: ClassVar[str] = "sanity"
    method: str
    model_name: str
    signed: bool
    threshold: float
    stages: list[str]
    """Cascade stages, top layer first; stage k has layers 0..k of this list randomised."""
    checks: list[dict]
    """One {name, value, bound, ok} per test that ran."""
    inputs: Tensor
    target: Tensor
    cascade_maps: Tensor
    """[1 + stages, batch, H, W]: the original maps, then each stage's."""
    spearman: Tensor
    """[stages, batch]: rank correlation of each stage's map with the original."""
    deletion_curve: Tensor | None = None
    deletion_random: Tensor | None = None
    insertion_curve: Tensor | None = None
    insertion_random: Tensor | None = None
    label_maps: Tensor | None = None
    label_spearman: Tensor | None = None
    completeness: Tensor | None = None

    def ok(self, name: str) -> bool:
        found = [c["ok"] for c in self.checks if c["name"] == name]
        if not found:
            raise MechscopeError(f"no '{name}' check ran: ran {', '.join(c['name'] for c in self.checks)}")
        return found[0]

    @property
    def passed(self) -> bool:
        return all(c["ok"] for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c["name"] for c in self.checks if not c["ok"]]

    def lines(self) -> list[str]:
        return [
            f"{'PASS' if c['ok'] else 'FAIL'} {c['name']}: {c['value']:.4g} (pass if {c['bound']})" for c in self.checks
        ]

    def to_frame(self):
        return pandas().DataFrame(
            {
                "stage": self.stages,
                "spearman_mean": self.spearman.mean(1).tolist(),
                "spearman_max": self.spearman.amax(1).tolist(),
            }
        )

    def plot(self):
        """The randomisation cascade: maps per stage and the correlation curve."""
        from .figures import cascade_figure

        return cascade_figure(self)

    def plot_curves(self):
        """Deletion and insertion curves against random order."""
        from .figures import curves_figure

        if self.deletion_curve is None:
            raise MechscopeError("this report has no deletion/insertion curves: run sanity with deletion=True")
        return curves_figure(self)


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 0..n-1 of each row [batch, n], tied values sharing their mean rank (as scipy's
    `rankdata`), in float64."""
    values, order = x.double().sort(dim=1, stable=True)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    group = starts.long().cumsum(1) - 1  # which run of equal values each sorted entry is in
    position = torch.arange(x.shape[1], dtype=torch.float64).expand_as(values)
    total = torch.zeros_like(values).scatter_add(1, group, position)
    count = torch.zeros_like(values).scatter_add(1, group, torch.ones_like(values))
    return torch.empty_like(values).scatter(1, order, (total / count).gather(1, group))


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation of each pair of maps [batch, ...] (average ranks for ties), for the
    whole batch at once; a constant map ranks nothing, so it scores 0."""
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    norm = ra.norm(dim=1) * rb.norm(dim=1)
    rho = (ra * rb).sum(1) / norm.clamp_min(1e-300)
    return torch.where(norm > 0, rho, torch.zeros_like(rho)).float()


def _maps(model: ModuleModel, images: Tensor, target: Tensor, method, batch_size: int | None, kwargs) -> Attribution:
    size = batch_size or len(images)
    parts = [
        attribute(model, images[i : i + size], target[i : i + size], method=method, **kwargs)
        for i in range(0, len(images), size)
    ]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    first.maps = torch.cat([p.maps for p in parts])
    first.target, first.inputs = target, images.cpu()
    if first.delta is not None and first.output_diff is not None:
        first.delta = torch.cat([p.delta for p in parts if p.delta is not None])
        first.output_diff = torch.cat([p.output_diff for p in parts if p.output_diff is not None])
    return first


def _label_model(model: ModuleModel, labels, epochs: int, seed: int, progress: bool) -> tuple[ModuleModel, float]:
    """The same architecture, re-initialised and trained on shuffled labels; its accuracy on them."""
    x, y = labels
    x, y = check_images(model, x), torch.as_tensor(y).long().to(model.device)
    module = copy.deepcopy(model.hf)
    for k, layer in enumerate(randomise.layers(module)):
        randomise.randomise(module, layer, seed + 1000 + k)
    gen = torch.Generator().manual_seed(seed)
    shuffled = y[torch.randperm(len(y), generator=gen).to(y.device)]
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    forward = forward_fn(ModuleModel(module))
    module.train()
    for _ in tqdm(range(epochs), desc="random labels", unit="epoch", disable=not progress):
        for batch in torch.randperm(len(y), generator=gen).split(64):
            loss = F.cross_entropy(forward(x[batch]), shuffled[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    module.eval()
    with torch.no_grad():
        accuracy = float((forward(x).argmax(-1) == shuffled).float().mean())
    return ModuleModel(module, name=f"{model.name} (random labels)"), accuracy


def _check(name: str, value: float | Tensor, bound: str, ok: bool | Tensor) -> dict:
    return {"name": name, "value": float(value), "bound": bound, "ok": bool(ok)}


def _faithfulness(model, images, target, attr, steps, n_random, seed, baseline) -> tuple[list[dict], dict]:
    forward, pixels = forward_fn(model), images.shape[-2] * images.shape[-1]
    base = torch.zeros_like(images) if baseline is None else torch.as_tensor(baseline).to(images).expand_as(images)
    steps = min(steps or pixels, pixels)
    orders, randoms = faithfulness.ranked(attr.maps), faithfulness.random_orders(len(images), pixels, n_random, seed)
    out, checks = {}, []
    for kind, insertion in (("deletion", False), ("insertion", True)):
        curve = faithfulness.curves(forward, images, target, orders, base, steps, insertion)
        random = torch.stack([faithfulness.curves(forward, images, target, o, base, steps, insertion) for o in randoms])
        out[f"{kind}_curve"], out[f"{kind}_random"] = curve, random.mean(0)
        a, r = float(faithfulness.auc(curve).mean()), float(faithfulness.auc(random.mean(0)).mean())
        better = a < r if kind == "deletion" else a > r
        checks.append(_check(kind, a, f"{'<' if kind == 'deletion' else '>'} random order's {r:.4g}", better))
    return checks, out


def _prep(result: Attribution):
    """What the rank correlation compares: |map| for signed methods (a sign flip is no change
    in where the model looks), the map itself otherwise."""
    return (lambda m: m.abs()) if result.signed else (lambda m: m)


def _cascade(model: ModuleModel, images, target, method, batch_size, kwargs, original, threshold, seed, progress):
    """(stage names, stage maps, Spearman [stages, batch], checks) of the top-down cascade."""
    names, maps = [], []
    total = len(randomise.top_down(model.hf))  # stages share one module: use each before the next
    stages = tqdm(randomise.cascade(model.hf, seed), total=total, desc="cascade", unit="stage", disable=not progress)
    for name, module in stages:
        stage = ModuleModel(module, name=f"{model.name} (randomised to {name})")
        names.append(name)
        maps.append(_maps(stage, images, target, method, batch_size, kwargs).maps)
    prep = _prep(original)
    rho = torch.stack([rank_correlation(prep(original.maps), prep(m)) for m in maps])
    # the first stage randomises only the output layer: a map of the class decision must move already
    top, full = rho[0].mean(), rho[-1].mean()
    checks = [
        _check("top-layer randomisation", top, f"< {threshold} ({names[0]} only)", top < threshold),
        _check("randomisation", full, f"< {threshold}", full < threshold),
    ]
    return names, maps, rho, checks


def _labels(model, images, target, method, batch_size, kwargs, original, labels, epochs, threshold, seed, progress):
    """(extra report fields, check) of the label randomisation test."""
    shuffled, accuracy = _label_model(model, labels, epochs, seed, progress)
    maps = _maps(shuffled, images, target, method, batch_size, kwargs).maps
    rho = rank_correlation(_prep(original)(original.maps), _prep(original)(maps))
    logger.info("random-label model fits its shuffled labels to %.2f accuracy", accuracy)
    value = rho.mean()
    check = _check("labels", value, f"< {threshold} (random-label fit {accuracy:.2f})", value < threshold)
    return {"label_maps": maps, "label_spearman": rho}, check


def sanity(
    model,
    method="gradcam",
    inputs: Tensor | None = None,
    target=None,
    *,
    randomisation: bool = True,
    labels: tuple[Tensor, Tensor] | None = None,
    label_epochs: int = 20,
    deletion: bool = True,
    deletion_steps: int | None = None,
    n_random: int = 5,
    threshold: float = 0.5,
    completeness_tol: float = 1e-2,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    **attribute_kwargs,
) -> SanityReport:
    """Run the sanity checks on `method` (a name `attribute` knows, or a callable
    `(model, images, target) -> maps`) for `inputs` and their `target` classes (None: the
    model's predictions, kept fixed through every stage). batch_size: images per attribute
    call (None: all at once). progress: tqdm bars over the stages and the random-label
    epochs. Other keyword arguments go to `attribute`."""
    if inputs is None:
        raise MechscopeError("sanity needs inputs: a batch of images [batch, channels, height, width]")
    model = as_image_model(model)
    images = check_images(model, inputs)
    target = targets_for(model, images, target)
    original = _maps(model, images, target, method, batch_size, attribute_kwargs)
    common = (images, target, method, batch_size, attribute_kwargs, original)
    names, maps, rho, checks = (
        _cascade(model, *common, threshold, seed, progress)
        if randomisation
        else ([], [], torch.zeros(0, len(images)), [])
    )
    extra: dict = {}
    if labels is not None:
        fields, check = _labels(model, *common, labels, label_epochs, threshold, seed, progress)
        extra.update(fields)
        checks.append(check)
    if deletion:
        baseline = attribute_kwargs.get("baseline")
        more, curves = _faithfulness(model, images, target, original, deletion_steps, n_random, seed, baseline)
        checks += more
        extra.update(curves)
    if original.completeness is not None:
        worst = original.completeness.max()
        checks.append(_check("completeness", worst, f"<= {completeness_tol}", worst <= completeness_tol))
        extra["completeness"] = original.completeness
    return SanityReport(
        original.method, model.name, original.signed, threshold, names, checks, images.cpu(), target,
        torch.stack([original.maps, *maps]), rho, **extra,
    )  # fmt: skip
