"""A calibrated "is the model right?" probe: the hallucination signal, read per position.

    conf = train_confidence(model, texts)              # labels from the model's own predictions
    conf.metrics["test"]       # AUROC, Brier, ECE of the probe (raw and calibrated), max softmax, entropy
    scores = score(model, conf, ["def add(a, b):"])    # calibrated P(right) per position

Texts are split by text into train / validation / calibration / test. A logistic probe is
trained per site on train; the site with the best validation AUROC is kept; its probability
is calibrated on the calibration split (temperature or isotonic); every number reported is
on the test split, next to the model's max softmax probability and predictive entropy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import MechscopeError
from ..io import read_json, read_tensors, write_json, write_tensors
from .calibration import apply_calibrator, fit_calibrator
from .correctness import Correctness, next_token_correctness
from .heads import ProbeConfig
from .metrics import Reliability, auroc, brier, reliability
from .probe import Probe, check_labels, fit_rows
from .saving import save_folder

log = logging.getLogger(__name__)
SPLITS = (0.4, 0.2, 0.2, 0.2)
"""Shares of the texts for train, validation (choosing the site), calibration and test."""


@dataclass(frozen=True)
class ConfidenceProbe:
    """A logistic probe of "right" at one site with its calibrator and test metrics."""

    probe: Probe
    calibration: str
    params: dict[str, Tensor]
    metrics: dict = field(default_factory=dict)

    @property
    def site(self) -> str:
        return self.probe.site

    def raw(self, x: Float[Tensor, "*rows d"]) -> Tensor:
        """The probe's own probability of "right" (before calibration)."""
        return self.probe.proba(x)[..., 1]

    def __call__(self, x: Float[Tensor, "*rows d"]) -> Tensor:
        """Calibrated probability that the model's prediction at each row is right."""
        return apply_calibrator(self.raw(x), self.params)

    def reliability(self) -> dict[str, Reliability]:
        """The test split's reliability bins: probe raw, calibrated, and max softmax."""
        return {
            name: Reliability(
                *(torch.tensor(v) for v in (bins["edges"], bins["count"], bins["confidence"], bins["accuracy"]))
            )
            for name, bins in self.metrics.get("reliability", {}).items()
        }

    def plot(self):
        """Reliability diagrams of the test split, side by side."""
        from matplotlib.figure import Figure

        diagrams = self.reliability()
        fig = Figure(figsize=(4.2 * max(len(diagrams), 1), 4.0))
        for ax, (name, r) in zip(fig.subplots(1, max(len(diagrams), 1), squeeze=False)[0], diagrams.items()):
            r.plot(ax, label=name)
            ax.set_title(name, fontsize=9)
        return fig

    def save(self, path: str | Path) -> Path:
        """A folder: cfg.json, calibration.safetensors, metrics.json, probe/ (written whole)."""
        return save_folder(path, self._write)

    def _write(self, path: Path) -> None:
        self.probe.write(path / "probe")
        write_tensors(path / "calibration.safetensors", self.params or {"none": torch.zeros(1)})
        write_json(path / "metrics.json", self.metrics)
        write_json(path / "cfg.json", {"type": "confidence", "calibration": self.calibration, "site": self.site})

    @classmethod
    def load(cls, path: str | Path) -> ConfidenceProbe:
        path = Path(path)
        if not (path / "cfg.json").is_file():
            raise MechscopeError(f"no confidence probe at '{path}': train one with `mechscope confidence train`")
        cfg = read_json(path / "cfg.json")
        if cfg.get("type") != "confidence":
            raise MechscopeError(f"'{path}' does not hold a confidence probe (its cfg.json says {cfg.get('type')!r})")
        params = read_tensors(path / "calibration.safetensors", what="calibration")
        params.pop("none", None)
        metrics = read_json(path / "metrics.json") if (path / "metrics.json").is_file() else {}
        return cls(Probe.load(path / "probe"), cfg["calibration"], params, metrics)


def split4(texts: Tensor, seed: int) -> list[Tensor]:
    """Row indices of train / validation / calibration / test, whole texts to each."""
    unique = texts.unique()
    if len(unique) < 8:
        raise MechscopeError(f"{len(unique)} texts: the confidence probe needs at least 8 (split 4 ways by text)")
    order = unique[torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))]
    bounds = (torch.tensor((0.0, *SPLITS)).cumsum(0) * len(unique)).round().long()
    return [torch.isin(texts, order[a:b]).nonzero().flatten() for a, b in zip(bounds[:-1], bounds[1:])]


def _summary(p: Tensor, y: Tensor) -> dict:
    return {"auroc": auroc(p, y), "brier": brier(p, y), "ece": reliability(p, y).ece}


def _bins(p: Tensor, y: Tensor) -> dict:
    r = reliability(p, y)
    return {k: getattr(r, k).tolist() for k in ("edges", "count", "confidence", "accuracy")}


def fit_confidence(
    corr: Correctness, cfg: ProbeConfig | None = None, *, calibration: str = "temperature"
) -> ConfidenceProbe:
    """Train, choose the site, calibrate and test on labels you already have."""
    cfg = replace(cfg or ProbeConfig(), kind="logistic")
    data = corr.data
    check_labels(data)
    train, val, cal, test = split4(data.texts, cfg.seed)
    best, per_site = None, {}
    for site in data.sites:
        p = fit_rows(data, site, train, val, cfg)
        per_site[site] = auroc(p.proba(data.x(site, val))[:, 1], data.labels[val])
        if best is None or per_site[site] > per_site[best.site]:
            best = p
    assert best is not None
    params = fit_calibrator(best.proba(data.x(best.site, cal))[:, 1].detach(), data.labels[cal], calibration)
    conf = ConfidenceProbe(best, calibration, params)
    x, y = data.x(best.site, test), data.labels[test]
    raw, calibrated, msp = conf.raw(x).detach(), conf(x).detach(), corr.max_prob[test]
    metrics = {
        "site": best.site,
        "validation_auroc": per_site,
        "rows": {"train": len(train), "validation": len(val), "calibration": len(cal), "test": len(test)},
        "right_rate_test": float(y.float().mean()),
        "test": {
            "probe_raw": _summary(raw, y),
            "probe_calibrated": _summary(calibrated, y),
            "max_softmax": _summary(msp, y),
            "entropy_auroc": auroc(-corr.entropy[test], y),
        },
        "reliability": {
            "probe raw": _bins(raw, y),
            "probe calibrated": _bins(calibrated, y),
            "max softmax": _bins(msp, y),
        },
    }
    return replace(conf, metrics=metrics)


def train_confidence(
    model,
    texts: Sequence[str],
    *,
    sites: str | Sequence[str] = "blocks.*.hook_resid_post",
    calibration: str = "temperature",
    cfg: ProbeConfig | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> ConfidenceProbe:
    """The confidence probe of next-token correctness on `texts` (see the module docstring)."""
    corr = next_token_correctness(model, texts, sites, batch_size=batch_size, progress=progress)
    return fit_confidence(corr, cfg, calibration=calibration)


@dataclass
class Scores:
    """Calibrated P(right) at every position of every prompt (0 at padding)."""

    probability: Float[Tensor, "batch pos"]
    run: object
    """The `Run` the scores were read from (tokens, mask, logits)."""

    def tokens(self, row: int = 0) -> list[tuple[str, float]]:
        """(token, probability) of one prompt's real positions."""
        pieces = self.run.str_tokens(row)  # type: ignore[attr-defined]  # a Run
        return list(zip(pieces, self.probability[row, : len(pieces)].tolist()))


def score_run(conf: ConfidenceProbe, run) -> Scores:
    """Scores from a run that recorded the probe's site."""
    x = run.cache[conf.site]
    probability = conf(x.flatten(2)).detach().cpu().float()
    if run.mask is not None:
        probability = probability * run.mask.cpu()
    return Scores(probability, run)


def score(model, conf: ConfidenceProbe, prompts, *, batch_size: int | None = None) -> Scores:
    """Run `prompts` and read the calibrated probability that each next-token prediction is right."""
    conf.probe.check(model)
    return score_run(conf, model.run(prompts, record=conf.site, batch_size=batch_size))
