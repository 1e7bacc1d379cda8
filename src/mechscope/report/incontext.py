"""Report sections for in-context results: a fitted function vector and a linear relation
(`mechscope fv ... --save` / `mechscope relation ...`); the report wires them when given a
saved `FunctionVectorResult` or `RelationResult` folder (`saved_fv_section`,
`saved_relation_section`)."""

from __future__ import annotations

import html

from .sections import _png, heading


def fv_section(result) -> str:
    """Indirect-effect heatmap, accuracy by insertion layer and the compression figure of a
    `FunctionVectorResult`."""
    heads = ", ".join(f"L{layer}H{head}" for layer, head in result.heads)
    return (
        heading(
            f"Function vector: {html.escape(result.task)}",
            "the heads that carry the task from the demonstrations to the last token, summed into one "
            "vector that makes a bare query do the task (Todd et al. 2024).",
        )
        + f"<p>Heads {html.escape(heads)}; added before block {result.layer}. Held-out accuracy: zero-shot "
        f"{result.zero_shot_accuracy:.3f}, with the vector {result.fv_accuracy:.3f}, {result.shots}-shot "
        f"{result.icl_accuracy:.3f}. Prompt compression: {result.tokens_saved:.1f} tokens replaced, "
        f"{result.accuracy_kept:.0f}% of the k-shot accuracy kept.</p>" + _png(result.plot())
    )


def relation_section(result) -> str:
    """Faithfulness by β and causality by rank of a `RelationResult`."""
    return (
        heading(
            f"Linear relation: {html.escape(result.name)}",
            "the affine map from subject to object representation taken from the model's Jacobian "
            "(Hernandez et al. 2023).",
        )
        + f"<p>{html.escape(result.subject_site)} → {html.escape(result.object_site)}: faithfulness "
        f"{result.faithfulness:.3f} at β={result.beta:g} (most frequent object: {result.baseline:.3f}); "
        f"causality {result.causality:.3f} at rank {result.rank}; {result.n_fit} fitting and "
        f"{result.n_test} held-out samples.</p>" + _png(result.plot())
    )


def saved_fv_section(model, run, *, folder) -> str:
    """`fv_section` of the result saved in `folder` (`mechscope fv ... --save-result`)."""
    from ..incontext import FunctionVectorResult

    return fv_section(FunctionVectorResult.load(folder))


def saved_relation_section(model, run, *, folder) -> str:
    """`relation_section` of the result saved in `folder` (`mechscope relation ... --save-result`)."""
    from ..incontext import RelationResult

    return relation_section(RelationResult.load(folder))
