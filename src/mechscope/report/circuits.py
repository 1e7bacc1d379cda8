"""Report section: the EAP circuit of an automatic induction task (repeated random
tokens) for causal language models (add `section` to SECTIONS)."""

from __future__ import annotations

import html

from .sections import _png, heading

MAX_LAYERS = 12  # EAP is one forward + backward, but the drawing stops being readable beyond this
TOP_EDGES = 12
SIZES = (TOP_EDGES, 50, 200)
"""Circuit sizes (edges kept) whose faithfulness the section reports: how much of the
behaviour the drawn edges carry, and how many more it takes."""
SPAN, PREFIX = 10, 6
TITLE = "Circuit (EAP)"
WHAT = (
    "which connections between heads and MLPs the model uses to continue a repeated random sequence "
    "(induction), found by edge attribution patching, and how much of the behaviour they carry alone."
)


def _task_shape(model) -> tuple[int, int] | None:
    """(span, prefix) of the induction task that fits the model's context, or None."""
    limit = model.context_length
    span, prefix = SPAN, PREFIX
    if limit is not None and 1 + span + prefix > limit:
        span = (limit - 1) * 3 // 5
        prefix = min(span - 1, limit - 1 - span)
    return (span, prefix) if prefix >= 2 else None


def _faithfulness(scores, model, task) -> list[tuple[int, float]]:
    return [(n, scores.circuit(top=n).faithfulness(model, task)) for n in SIZES if n <= scores.n_edges]


def _comment(faiths: list[tuple[int, float]]) -> str:
    """What the faithfulness numbers mean for the reader."""
    shown = ", ".join(f"top {n}: {f:.0%}" for n, f in faiths)
    text = (
        "With every other edge ablated (corrupted values), the top edges keep this share of the "
        f"clean-corrupted gap: {shown}."
    )
    first = faiths[0][1]
    if abs(first) < 0.1:
        more = next((n for n, f in faiths if f >= 0.5), None)
        text += (
            f" <b>The {faiths[0][0]} drawn edges alone do not carry the behaviour</b>: the effect is spread over "
            "more edges than are drawn, or EAP's first-order estimate ranks them poorly on this model "
            + (f"(it takes about {more} edges to keep half)." if more else "(even the largest size keeps under half).")
            + " Read the drawing as where the strongest estimated effects are, not as a complete circuit; "
            "<code>mechscope circuit</code> searches larger circuits and ACDC."
        )
    elif first < 0:
        text += " A negative share: the drawn edges alone push the metric the wrong way."
    return f"<p>{text}</p>"


def section(model, run) -> str:
    """Top edges of edge attribution patching on a repeated-random-tokens task whose
    corrupted copy reverses the first occurrence (so copying predicts another token)."""
    if not model.has_lm_head or model.adapter.attn_in_norm is None:
        return ""
    from ..circuits import eap, induction_task
    from ..circuits.circuit import CHANNEL_COLOURS, CHANNEL_NAMES
    from ..errors import MechscopeError

    if model.dims.n_layers > MAX_LAYERS:
        return heading(TITLE, WHAT) + (
            f"<p>Skipped: {model.dims.n_layers} layers; the report draws circuits of models up to "
            f"{MAX_LAYERS} layers (use <code>mechscope circuit</code>).</p>"
        )
    shape = _task_shape(model)
    if shape is None:
        return heading(TITLE, WHAT) + (
            f"<p>Skipped: the automatic task repeats a random sequence and needs at least 6 positions; "
            f"{html.escape(model.name)} reads {model.context_length}.</p>"
        )
    span, prefix = shape
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else 0
    try:
        task = induction_task(model, span=span, prefix=prefix, batch=8, seed=0, bos=bos)
        scores = eap(model, task)
        found = scores.circuit(top=TOP_EDGES)
        faiths = _faithfulness(scores, model, task)
    except MechscopeError as err:
        return heading(TITLE, WHAT) + f"<p>Skipped: {html.escape(str(err))}.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{html.escape(r)}</td><td>{v:+.3f}</td></tr>"
        for (s, r), v in found.top(TOP_EDGES)
    )
    colours = "; ".join(
        f"{CHANNEL_COLOURS[c].removeprefix('tab:').replace('gray', 'grey')}: {CHANNEL_NAMES[c]}"
        for c in found.channels()
    )
    return (
        heading(TITLE, WHAT)
        + f"<p>Edge attribution patching on 8 repeated random sequences (<code>[bos] r r[:{prefix}]</code>, "
        f"r of {span} tokens, answer r[{prefix}]); corrupted: the first copy reversed. Top {TOP_EDGES} edges by "
        f"|score| (estimated change of the {html.escape(found.metric)} when the edge carries the corrupted "
        "value). Nodes: a<i>L</i>.h<i>H</i> an attention head, a<i>L</i>.kv<i>K</i> a key/value head shared "
        "by a group of query heads, m<i>L</i> an MLP; edge colours, as in the legend: "
        f"{html.escape(colours)}.</p>"
        + _comment(faiths)
        + _png(found.plot())
        + f"<table><tr><th>sender</th><th>receiver</th><th>score</th></tr>{rows}</table>"
    )
