"""Report section: the logit lens of the report prompt (add `section` to SECTIONS)."""

from __future__ import annotations

import html

from .sections import _png, heading

MAX_POSITIONS = 40  # the figure stays readable; longer prompts show their last positions


def section(model, run) -> str:
    """Logit-lens heatmap (layers x positions, top-1 token and probability) of the report
    prompt; "" without a prompt or for models without an LM head."""
    if run is None or not model.has_lm_head or run.mask is None:
        return ""
    from ..lens import logit_lens

    length = int(run.lengths[0])
    ids = run.tokens[:1, :length]
    positions = list(range(max(0, length - MAX_POSITIONS), length))
    lens = logit_lens(model, ids, positions=positions, include_mid=False, k=1)
    cut = f" (last {MAX_POSITIONS} positions)" if length > MAX_POSITIONS else ""
    return (
        heading(
            "Logit lens",
            "what each layer would predict if the model stopped there, at every position of the prompt; "
            "the layer where the final answer first appears is where it is formed.",
        )
        + "<p>Every block's residual stream (<code>blocks.{l}.hook_resid_post</code>, and the embeddings at "
        "the bottom) read "
        f"through the model's own final norm and unembedding{html.escape(cut)}. Colour: probability of the "
        "top-1 token written in the cell.</p>" + _png(lens.plot())
    )
