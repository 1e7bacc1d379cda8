"""Report section: the EAP circuit of an automatic induction task (repeated random
tokens) for causal language models (add `section` to SECTIONS)."""

from __future__ import annotations

import html

from .sections import _png

MAX_LAYERS = 12  # EAP is one forward + backward, but the drawing stops being readable beyond this
TOP_EDGES = 12


def section(model, run) -> str:
    """Top edges of edge attribution patching on a repeated-random-tokens task whose
    corrupted copy reverses the first occurrence (so copying predicts another token)."""
    if not model.has_lm_head or model.adapter.attn_in_norm is None:
        return ""
    from ..circuits import eap, induction_task
    from ..errors import MechscopeError

    if model.dims.n_layers > MAX_LAYERS:
        return (
            f"<h2>Circuit (EAP)</h2><p>Skipped: {model.dims.n_layers} layers; the report draws circuits of "
            f"models up to {MAX_LAYERS} layers (use <code>mechscope circuit</code>).</p>"
        )
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else 0
    try:
        task = induction_task(model, span=10, prefix=6, batch=8, seed=0, bos=bos)
        found = eap(model, task).circuit(top=TOP_EDGES)
        faith = found.faithfulness(model, task)
    except MechscopeError as err:
        return f"<h2>Circuit (EAP)</h2><p>Skipped: {html.escape(str(err))}.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{html.escape(r)}</td><td>{v:+.3f}</td></tr>"
        for (s, r), v in found.top(TOP_EDGES)
    )
    return (
        "<h2>Circuit (EAP)</h2><p>Edge attribution patching on 8 repeated random sequences "
        "(<code>[bos] r r[:6]</code>, answer r[6]); corrupted: the first copy reversed. Top "
        f"{TOP_EDGES} edges by |score| (estimated change of the {html.escape(found.metric)} when the edge carries "
        f"the corrupted value); with everything else ablated they keep {faith:.0%} of the clean-corrupted gap. "
        "Edge colours: query blue, key green, value red.</p>"
        + _png(found.plot())
        + f"<table><tr><th>sender</th><th>receiver</th><th>score</th></tr>{rows}</table>"
    )
