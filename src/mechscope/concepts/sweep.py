"""Probes at every site, each next to its control task (Hewitt & Liang 2019).

    sweep = probe_layers(data, control=True)
    sweep.accuracy, sweep.control, sweep.selectivity     # [sites], held-out texts
    sweep.plot(); sweep.save("out/probes")               # one probe folder per site

A control task gives each word type (token id) a label drawn at random from the task's own
label distribution, fixed for every occurrence of that type; the same probe family, tuned
the same way, is trained on it. Selectivity = task accuracy - control accuracy: a probe
that scores high only because it can memorise word types is not selective.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import MechscopeError
from ..io import read_json, write_json
from .heads import ProbeConfig
from .labelled import Labelled
from .probe import Probe, probe
from .saving import save_folder

log = logging.getLogger(__name__)


def control_labels(groups: Int[Tensor, " row"], labels: Int[Tensor, " row"], n_classes: int, seed: int = 0) -> Tensor:
    """One random label per word type, drawn from the empirical label distribution."""
    unique, inverse = groups.unique(return_inverse=True)
    freq = torch.bincount(labels, minlength=n_classes).float()
    gen = torch.Generator().manual_seed(seed + 12_345)
    per_type = torch.multinomial(freq / freq.sum(), len(unique), replacement=True, generator=gen)
    return per_type[inverse]


@dataclass
class ProbeSweep:
    """Held-out accuracy of a probe per site, its control task's, and their difference."""

    sites: list[str]
    accuracy: Float[Tensor, " site"]
    control: Float[Tensor, " site"] | None
    majority: float
    probes: list[Probe]

    @property
    def selectivity(self) -> Tensor | None:
        return None if self.control is None else self.accuracy - self.control

    @property
    def best(self) -> Probe:
        """The probe of the site with the highest held-out accuracy."""
        return self.probes[int(self.accuracy.argmax())]

    def table(self) -> list[dict]:
        sel = self.selectivity
        return [
            {
                "site": s,
                "accuracy": float(self.accuracy[i]),
                "control": None if self.control is None else float(self.control[i]),
                "selectivity": None if sel is None else float(sel[i]),
                "l2": self.probes[i].l2,
            }
            for i, s in enumerate(self.sites)
        ]

    def plot(self):
        """Held-out accuracy, control accuracy and selectivity per site, majority rate dashed."""
        from ..plots import figure

        fig, ax = figure(max(5.0, 0.7 * len(self.sites)), 3.5)
        x = range(len(self.sites))
        ax.plot(x, self.accuracy, "o-", label="task accuracy")
        if self.control is not None:
            sel = self.selectivity
            assert sel is not None
            ax.plot(x, self.control, "s--", label="control accuracy")
            ax.plot(x, sel, "^-", label="selectivity")
        ax.axhline(self.majority, color="grey", ls=":", label="majority class")
        ax.set_xticks(list(x), [s.replace(".hook_", ".") for s in self.sites], rotation=45, ha="right", fontsize=8)
        ax.set_ylim(min(0.0, float(self.accuracy.min())), 1.02)
        ax.set_ylabel("held-out accuracy")
        ax.set_title(f"{self.probes[0].kind} probes ({', '.join(self.probes[0].classes[:6])})", fontsize=9)
        ax.legend(fontsize=8)
        return fig

    def save(self, path: str | Path) -> Path:
        """A folder: sweep.json + one probe folder per site (written whole)."""

        def write(folder: Path) -> None:
            for i, p in enumerate(self.probes):
                p.write(folder / f"probe-{i:02d}")
            write_json(folder / "sweep.json", {"type": "probe-sweep", "majority": self.majority, "rows": self.table()})

        return save_folder(path, write)

    @classmethod
    def load(cls, path: str | Path) -> ProbeSweep:
        path = Path(path)
        if not (path / "sweep.json").is_file():
            raise MechscopeError(f"no probe sweep at '{path}' (no sweep.json): write one with `mechscope probe train`")
        info = read_json(path / "sweep.json")
        rows = info["rows"]
        probes = [Probe.load(path / f"probe-{i:02d}") for i in range(len(rows))]
        control = None if rows[0]["control"] is None else torch.tensor([r["control"] for r in rows])
        return cls(
            [r["site"] for r in rows], torch.tensor([r["accuracy"] for r in rows]), control, info["majority"], probes
        )


def probe_layers(
    data: Labelled, sites: list[str] | None = None, cfg: ProbeConfig | None = None, *, control: bool = True, **options
) -> ProbeSweep:
    """A probe (and its control task, when `control`) at every site of `data` (or `sites`)."""
    cfg = replace(cfg or ProbeConfig(), **options)
    sites = sites or data.sites
    fake = None
    if control:
        fake = data.with_labels(control_labels(data.groups, data.labels, len(data.classes), cfg.seed), data.classes)
    probes, controls = [], []
    for site in sites:
        probes.append(probe(data, site, cfg))
        if fake is not None:
            controls.append(probe(fake, site, cfg).metrics["test_accuracy"])
            probes[-1].metrics["control_accuracy"] = controls[-1]
            probes[-1].metrics["selectivity"] = probes[-1].metrics["test_accuracy"] - controls[-1]
        log.info("%s: %s", site, probes[-1].metrics)
    accuracy = torch.tensor([p.metrics["test_accuracy"] for p in probes])
    return ProbeSweep(
        list(sites), accuracy, torch.tensor(controls) if control else None, probes[0].metrics["majority"], probes
    )
