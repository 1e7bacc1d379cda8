"""Report sections: direct logit attribution of the model's own top prediction, and
the attention-head detectors. Formatting only; the methods compute."""

from __future__ import annotations

from .sections import _png, _tok, heading


def attribution(model, run) -> str:
    """Which heads and MLPs write the top next-token prediction at the last position,
    measured against the runner-up (logit difference)."""
    if (
        run is None
        or not model.has_lm_head
        or getattr(model, "adapter", None) is None
        or model.adapter.final_norm is None
    ):
        return ""
    from ..attribution import direct_logit_attribution

    length = int(run.lengths[0])
    top2 = run.logits[0, length - 1].topk(2).indices.tolist()
    ids = run.tokens[:1, :length]
    dla = direct_logit_attribution(model, ids, top2[0], vs=top2[1], positions=-1)
    first, second = (_tok(model.tokenizer.decode([t]) if model.tokenizer is not None else str(t)) for t in top2)
    return (
        heading(
            "Direct logit attribution",
            "which heads and MLPs write the model's final prediction directly into its output, and which argue "
            "against it.",
        )
        + "<p>Why the model prefers "
        + first
        + " over "
        + second
        + " after the last token: each component's direct contribution to the logit difference, through the "
        "final norm with its scale frozen (the contributions sum to the difference).</p>" + _png(dla.plot(k=15))
    )


def heads(model, run) -> str:
    """Previous-token, duplicate-token and induction scores of every head, on repeated
    random token sequences."""
    if getattr(model, "adapter", None) is None or model.dims.n_layers * model.dims.n_heads == 0:
        return ""
    from ..heads import duplicate_token_scores, induction_scores, previous_token_scores, repeated_random_tokens

    span = 20
    vocab = model.module(model.adapter.embed).num_embeddings
    if model.adapter.pos_embed and model._has_module(model.adapter.pos_embed):
        span = min(span, (model.module(model.adapter.pos_embed).num_embeddings - 1) // 2)
    if span < 2 or vocab < span + 1:
        return ""
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    tokens = repeated_random_tokens(vocab, span, batch=8, seed=0, prefix_token=bos)
    figures = [
        _png(scores.plot())
        for scores in (
            previous_token_scores(model, tokens),
            duplicate_token_scores(model, tokens, span=span),
            induction_scores(model, tokens, span=span),
        )
    ]
    return (
        heading(
            "Attention heads",
            "which heads do three well-known jobs: look at the previous token, at an earlier copy of the same "
            "token, or at the token after that copy (induction, the basis of in-context copying).",
        )
        + "<p>Scores of every head on random spans of "
        f"{span} tokens repeated twice: "
        "previous-token (attention to i−1), duplicate-token (to the earlier copy of the same token) and "
        "induction (to the token after the earlier copy).</p>" + "".join(figures)
    )
