"""Figures of the in-context results: per-head indirect effects and accuracy by insertion
layer (function vectors); faithfulness and causality by β and rank (relations)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from .function_vector import FunctionVectorResult
    from .relation import RelationResult


def fv_figure(result: FunctionVectorResult) -> Figure:
    """Left: indirect effect per (layer, head), chosen heads boxed. Right: zero-shot
    accuracy with the FV added before each block, against k-shot and plain zero-shot."""
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    effects = result.effects.numpy()
    limit = max(abs(effects).max(), 1e-6)
    image = left.imshow(effects, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for layer, head in result.heads:
        left.add_patch(_box(head, layer))
    left.set(xlabel="head", ylabel="layer", title=f"indirect effect (Δ P(answer)): {result.task}")
    fig.colorbar(image, ax=left)
    layers = range(len(result.accuracy_by_layer))
    right.plot(layers, result.accuracy_by_layer.numpy(), marker="o", label="zero-shot + FV (fitting pairs)")
    right.axhline(result.icl_accuracy, color="tab:green", ls="--", label=f"{result.shots}-shot (held out)")
    right.axhline(result.zero_shot_accuracy, color="grey", ls=":", label="zero-shot (held out)")
    right.set(xlabel="insertion layer (resid_pre)", ylabel="accuracy", ylim=(-0.02, 1.02), xticks=list(layers))
    right.set_title(f"FV at layer {result.layer}: held-out accuracy {result.fv_accuracy:.2f}", fontsize=9)
    right.legend(fontsize=7)
    return fig


def _box(x: int, y: int):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.5)


def relation_figure(result: RelationResult) -> Figure:
    """Faithfulness by β (left) and causality by rank (right)."""
    fig = Figure(figsize=(8.0, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(result.betas.numpy(), result.faithfulness_by_beta.numpy(), marker="o", label="LRE")
    left.axhline(result.baseline, color="grey", ls=":", label="most frequent object")
    left.set(xlabel="β", ylabel="faithfulness", ylim=(-0.02, 1.02), title=f"{result.name}: faithfulness")
    left.legend(fontsize=7)
    right.plot(result.ranks.tolist(), result.causality_by_rank.numpy(), marker="o")
    right.set(xlabel="rank of J⁺", ylabel="causality", ylim=(-0.02, 1.02), title="edits Δs = J⁺(o′ − o)")
    return fig
