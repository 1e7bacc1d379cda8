"""Does a retrained zoo model reproduce its shipped card? One comparison per model, each
within the tolerance its card states (`card["tolerance"]`), so that `mechscope zoo train
NAME --out DIR` and `mechscope zoo check NAME DIR` can say which published measure a
retrain on another machine, torch build or thread count kept, and which it lost."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

PYCODE_TOLERANCE = {"heldout_loss_abs": 0.15, "copying_second_loss_max": 1.0}
"""pycode's card predates this module: a retrain should land near the shipped held-out loss
and must form induction (2nd-copy loss far below ln 4096 = 8.3 nats)."""


@dataclass(frozen=True)
class Check:
    """One measure of a retrained model against the shipped card."""

    metric: str
    shipped: float | None
    retrained: float
    bound: str
    """What `ok` tested, in words: `|new - shipped| <= 0.1`, `>= 0.99`, ..."""
    ok: bool

    def line(self) -> str:
        shipped = "" if self.shipped is None else f"shipped {self.shipped:.4g}, "
        return f"{'ok  ' if self.ok else 'FAIL'} {self.metric}: {shipped}retrained {self.retrained:.4g} ({self.bound})"


def near(metric: str, shipped: float, new: float, tol: float, *, relative: bool = False) -> Check:
    limit = tol * abs(shipped) if relative else tol
    return Check(metric, float(shipped), float(new), f"|new - shipped| <= {limit:.4g}", abs(new - shipped) <= limit)


def at_least(metric: str, new: float, bound: float, shipped: float | None = None) -> Check:
    return Check(metric, shipped, float(new), f">= {bound:g}", new >= bound)


def at_most(metric: str, new: float, bound: float, shipped: float | None = None) -> Check:
    return Check(metric, shipped, float(new), f"<= {bound:g}", new <= bound)


def _induction(old: dict, new: dict) -> list[Check]:
    tol, a, b = old["tolerance"], old["metrics"], new["metrics"]
    checks = [
        near(k, a[k], b[k], tol[k])
        for k in ("first_copy_loss", "second_copy_loss", "best_prev_token_l0", "best_induction_l1")
    ]
    if a.get("induction_bump_step") and b.get("induction_bump_step"):
        checks.append(
            near(
                "induction_bump_step",
                a["induction_bump_step"],
                b["induction_bump_step"],
                tol["bump_step_relative"],
                relative=True,
            )
        )
    return checks


def _chain(old: dict, new: dict) -> list[Check]:
    tol, a, b = old["tolerance"], old["metrics"], new["metrics"]
    checks = [
        near(f"accuracy depth {d}", a["accuracy_by_depth"][d], b["accuracy_by_depth"][d], tol["accuracy"])
        for d in a["accuracy_by_depth"]
    ]
    for depth, rows in a["hop_attention"].items():
        for old_row, new_row in zip(rows[1 : int(depth) + 1], b["hop_attention"][depth][1 : int(depth) + 1]):
            # layer l's best head should attend to hop l's assignment, as strongly as shipped
            name = f"depth {depth} layer {old_row['layer']} attention to hop {old_row['hop']}"
            same_hop = new_row["hop"] == old_row["hop"]
            check = near(name, old_row["mass"], new_row["mass"], tol["hop_mass"])
            checks.append(
                Check(
                    check.metric, check.shipped, check.retrained, check.bound + " and same hop", check.ok and same_hop
                )
            )
    return checks


def _superposition(old: dict, new: dict) -> list[Check]:
    tol, a, b = old["tolerance"], old["metrics"], new["metrics"]
    norm_gap = max(
        abs(x - y)
        for ra, rb in zip(a["pentagon"]["feature_norms"], b["pentagon"]["feature_norms"])
        for x, y in zip(ra, rb)
    )
    phases_a = [c for row in a["phase"]["phases_rows_by_density"] for c in row]
    phases_b = [c for row in b["phase"]["phases_rows_by_density"] for c in row]
    differing = sum(x != y for x, y in zip(phases_a, phases_b)) / len(phases_a)
    dim_gap = max(abs(x - y) for x, y in zip(a["dimensionality"]["dim_star"], b["dimensionality"]["dim_star"]))
    represented = sum(x != y for x, y in zip(a["pentagon"]["n_represented"], b["pentagon"]["n_represented"]))
    plateau = b["dimensionality"]["plateau_mean_dim_star"]
    return [
        at_most("pentagon feature norms, max |difference|", norm_gap, tol["pentagon_feature_norm_abs"]),
        at_most(
            "pentagon sparsities with another number of represented features",
            represented,
            tol["pentagon_n_represented_abs"],
        ),
        at_most("phase-diagram cells in another phase (fraction)", differing, tol["phase_cells_differing_fraction"]),
        at_most("D* curve, max |difference|", dim_gap, tol["dim_star_abs"]),
        near("D* plateau mean (paper: 1/2)", 0.5, plateau, tol["plateau_tolerance_of_one_half"]),
    ]


def _digits(old: dict, new: dict) -> list[Check]:
    tol, a, b = old["tolerance"], old["metrics"], new["metrics"]
    return [near(k, a[k], b[k], tol[f"{k}_abs"]) for k in ("test_accuracy", "train_accuracy")]


def _modadd(old: dict, new: dict) -> list[Check]:
    tol, a, b = old["tolerance"], old["metrics"], new["metrics"]
    checks = [
        at_least("test_accuracy", b["test_accuracy"], tol["test_accuracy_min"], a["test_accuracy"]),
        at_least("train_accuracy", b["train_accuracy"], tol["train_accuracy_min"], a["train_accuracy"]),
        at_most("test_loss", b["test_loss"], tol["test_loss_max"], a["test_loss"]),
    ]
    if "analysis" in new:  # written by mechscope.toys' grokking analysis
        fa, fb = old["analysis"], new["analysis"]
        checks += [
            at_most(
                "key frequencies", len(fb["key_frequencies"]), tol["key_frequencies_max"], len(fa["key_frequencies"])
            ),
            at_least(
                "key-frequency share of the embedding",
                fb["key_frequency_share"],
                tol["key_frequency_share_min"],
                fa["key_frequency_share"],
            ),
        ]
    return checks


def _pycode(old: dict, new: dict) -> list[Check]:
    a, b = old["metrics"], new["metrics"]
    return [
        near("heldout_loss", a["heldout_loss"], b["heldout_loss"], PYCODE_TOLERANCE["heldout_loss_abs"]),
        at_most(
            "copying_second_loss",
            b["copying_second_loss"],
            PYCODE_TOLERANCE["copying_second_loss_max"],
            a["copying_second_loss"],
        ),
    ]


def _icl(old: dict, new: dict) -> list[Check]:
    tol, a, b = old["tolerance"], old["metrics"], new["metrics"]
    return [
        near(f"{kind} {task}", a[kind][task], b[kind][task], tol[f"{kind}_abs"])
        for kind in ("icl_accuracy", "zero_shot_accuracy")
        for task in a[kind]
    ]


COMPARISONS: dict[str, Callable[[dict, dict], list[Check]]] = {
    "induction": _induction,
    "chain": _chain,
    "superposition": _superposition,
    "digits": _digits,
    "icl": _icl,
    "vit-digits": _digits,  # the same measures: test and train accuracy within the card's tolerance
    "modadd": _modadd,
    "pycode": _pycode,
}
"""zoo name -> compare(shipped card, retrained card)."""
