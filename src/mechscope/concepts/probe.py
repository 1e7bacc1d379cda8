"""`Probe`: a frozen, trained probe at one site (weights + config + held-out metrics, saved as
`cfg.json` + `probe.safetensors` + `metrics.json`), and `probe(data, site)` that fits it.

    p = probe(data, "blocks.2.hook_resid_post", kind="logistic")
    p.metrics["test_accuracy"], p.metrics["majority"]       # held-out texts
    with model.steer(p.site, p.direction("keyword"), scale=4.0): ...

Fitting: texts (not rows) are split into train and test; the L2 strength is chosen by
k-fold cross-validation (folds by text) on the training texts; the chosen strength is then
trained on all training texts. All folds x strengths train at once (`heads.train_heads`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import MechscopeError
from ..io import read_json, read_tensors, write_json, write_tensors
from .heads import ProbeConfig, accuracy, forward, predict, standardiser, train_heads
from .labelled import Labelled
from .saving import save_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    """A trained probe: reads raw activations [..., d] of `site`, gives class scores.

    Invariants: `params` hold the heads' weights for standardised inputs ((x - mean) / scale);
    `classes` name the outputs (one logit for two-class logistic/linear probes)."""

    kind: str
    site: str
    model: str
    classes: tuple[str, ...]
    mean: Float[Tensor, " d"]
    scale: Float[Tensor, " d"]
    params: dict[str, Tensor]
    """weight [d, c] and bias [c] (mlp1 also w1 [d, h], b1 [h])."""
    l2: float = 0.0
    metrics: dict = field(default_factory=dict)

    @property
    def d_model(self) -> int:
        return int(self.mean.shape[0])

    def logits(self, x: Float[Tensor, "*rows d"]) -> Tensor:
        """Class scores of raw activations ([..., c]; c = 1 for two-class logistic/linear)."""
        if x.shape[-1] != self.d_model:
            raise MechscopeError(
                f"this probe reads {self.d_model} features ({self.site} of {self.model or 'its model'}), "
                f"got activations of width {x.shape[-1]}: use it on the model and site it was trained on"
            )
        z = (x.float() - self.mean.to(x.device)) / self.scale.to(x.device)
        batched = {k: v[None].to(x.device) for k, v in self.params.items()}
        return forward(batched, z.reshape(-1, self.d_model))[0].reshape(*x.shape[:-1], -1)

    def proba(self, x: Float[Tensor, "*rows d"]) -> Tensor:
        """Class probabilities [..., n_classes] (logistic and mlp1 probes)."""
        if self.kind == "linear":
            raise MechscopeError("a linear (least-squares) probe gives scores, not probabilities: use kind='logistic'")
        out = self.logits(x)
        if out.shape[-1] == 1:
            p = torch.sigmoid(out)
            return torch.cat([1 - p, p], -1)
        return out.softmax(-1)

    def predict(self, x: Float[Tensor, "*rows d"]) -> Tensor:
        """The predicted class index of each row."""
        return predict(self.kind, self.logits(x))

    def direction(self, label: str | int | None = None) -> Float[Tensor, " d"]:
        """A unit vector in activation space along which the probe's score for `label` grows
        (two classes: toward the second class): a steering direction."""
        if self.kind == "mlp1":
            raise MechscopeError("an mlp1 probe has no single direction: train a logistic or linear probe")
        w = self.params["weight"] / self.scale[:, None]
        if w.shape[1] == 1:
            v = w[:, 0] if label is None or self._index(label) == 1 else -w[:, 0]
        else:
            if label is None:
                raise MechscopeError(f"name the class to steer toward: one of {', '.join(self.classes)}")
            v = w[:, self._index(label)] - w.mean(1)
        return v / v.norm().clamp_min(1e-12)

    def _index(self, label: str | int) -> int:
        if str(label) in self.classes:
            return self.classes.index(str(label))
        if isinstance(label, int) and 0 <= label < len(self.classes):
            return label
        raise MechscopeError(f"unknown class {label!r}: this probe knows {', '.join(self.classes)}")

    def check(self, model) -> None:
        """Refuse a model other than the one this probe was trained on (name or width)."""
        if self.model and model.name != self.model:
            raise MechscopeError(f"this probe was trained on {self.model}, not {model.name}: train one for this model")
        width = int(torch.Size(model.table[self.site].sizes[2:]).numel())
        if width != self.d_model:
            raise MechscopeError(f"this probe reads {self.d_model} features but {self.site} has {width}")

    def save(self, path: str | Path) -> Path:
        """A folder: cfg.json + probe.safetensors + metrics.json (written whole)."""
        return save_folder(path, self.write)

    def write(self, path: Path) -> None:
        """The files into `path` (one by one: `save` makes the folder whole)."""
        tensors = {"mean": self.mean, "scale": self.scale, **self.params}
        write_tensors(path / "probe.safetensors", tensors)
        write_json(path / "metrics.json", self.metrics)
        cfg = {"type": "probe", "kind": self.kind, "site": self.site, "model": self.model}
        write_json(path / "cfg.json", {**cfg, "classes": list(self.classes), "l2": self.l2})

    @classmethod
    def load(cls, path: str | Path) -> Probe:
        path = Path(path)
        if not (path / "cfg.json").is_file():
            raise MechscopeError(f"no probe at '{path}': expected a folder with cfg.json and probe.safetensors")
        cfg = read_json(path / "cfg.json")
        if cfg.get("type") != "probe" or cfg.get("kind") not in ("logistic", "linear", "mlp1"):
            raise MechscopeError(f"'{path}' does not hold a probe (its cfg.json says {cfg.get('type')!r})")
        t = read_tensors(path / "probe.safetensors", what="probe weights")
        metrics = read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {}
        mean, scale = t.pop("mean"), t.pop("scale")
        return cls(cfg["kind"], cfg["site"], cfg["model"], tuple(cfg["classes"]), mean, scale, t, cfg["l2"], metrics)


def split_texts(texts: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Row indices of (train, test): whole texts go to test until `fraction` of the texts;
    rows themselves are split when there are fewer than 5 texts."""
    gen = torch.Generator().manual_seed(seed)
    unique = texts.unique()
    if len(unique) < 5:
        order = torch.randperm(len(texts), generator=gen)
        cut = max(1, int(len(texts) * fraction))
        return order[cut:].sort().values, order[:cut].sort().values
    chosen = unique[torch.randperm(len(unique), generator=gen)[: max(1, int(len(unique) * fraction))]]
    test = torch.isin(texts, chosen)
    return (~test).nonzero().flatten(), test.nonzero().flatten()


def fold_masks(texts: Tensor, folds: int, seed: int) -> Tensor:
    """[folds, n] bool: True where a row trains fold k's model (its text is not in fold k)."""
    unique, inverse = texts.unique(return_inverse=True)
    gen = torch.Generator().manual_seed(seed + 1)
    if len(unique) >= folds:
        fold = torch.randperm(len(unique), generator=gen)[inverse] % folds
    else:
        fold = torch.randperm(len(texts), generator=gen) % folds
    return torch.stack([fold != k for k in range(folds)])


def check_labels(data: Labelled) -> None:
    counts = torch.bincount(data.labels, minlength=len(data.classes))
    if int((counts > 0).sum()) < 2:
        only = data.classes[int(counts.argmax())] if len(data.classes) else "none"
        raise MechscopeError(f"every row has the label {only!r}: a probe needs at least two classes")


def probe(data: Labelled, site: str | None = None, cfg: ProbeConfig | None = None, **options) -> Probe:
    """Fit a probe at `site` (the only site when None) with held-out metrics; `options`
    override fields of `cfg` (kind=, l2=, epochs=, ...)."""
    cfg = replace(cfg or ProbeConfig(), **options)
    if site is None:
        if len(data.sites) != 1:
            raise MechscopeError(f"name the site to probe: one of {', '.join(data.sites)}")
        site = data.sites[0]
    check_labels(data)
    train, test = split_texts(data.texts, cfg.test_fraction, cfg.seed)
    return fit_rows(data, site, train, test, cfg)


def fit_rows(data: Labelled, site: str, train: Tensor, test: Tensor, cfg: ProbeConfig) -> Probe:
    """Fit on rows `train` (L2 by cross-validation over their texts), report on rows `test`."""
    if len(train) == 0 or len(test) == 0:
        raise MechscopeError(f"{len(train)} training and {len(test)} test rows: give more labelled texts")
    data.width(site)  # an unknown site fails here
    norm = standardiser(data, site, train, cfg.batch_size * 4)
    grid = torch.tensor(cfg.l2, dtype=torch.float32)
    folds = fold_masks(data.texts[train], cfg.folds, cfg.seed)
    masks = folds.repeat_interleave(len(grid), 0)  # head j: fold j // len(grid), strength j % len(grid)
    params = train_heads(data, site, train, masks, grid.repeat(cfg.folds), cfg, norm)
    cv = accuracy(data, site, train, ~masks, params, cfg.kind, norm).view(cfg.folds, len(grid)).mean(0)
    best = int(cv.argmax())
    everything = torch.ones(1, len(train), dtype=torch.bool)
    final = train_heads(data, site, train, everything, grid[best : best + 1], cfg, norm)
    one = torch.ones(1, len(test), dtype=torch.bool)
    test_acc = float(accuracy(data, site, test, one, final, cfg.kind, norm)[0])
    train_acc = float(accuracy(data, site, train, everything, final, cfg.kind, norm)[0])
    metrics = {
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "majority": data.subset(test).majority,
        "cv_accuracy": {str(v): float(a) for v, a in zip(cfg.l2, cv)},
        "n_train": len(train),
        "n_test": len(test),
    }
    log.info("probe %s at %s: test accuracy %.3f (l2 %g)", cfg.kind, site, test_acc, cfg.l2[best])
    weights = {k: v[0] for k, v in final.items()}
    return Probe(cfg.kind, site, data.model, data.classes, *norm, weights, cfg.l2[best], metrics)
