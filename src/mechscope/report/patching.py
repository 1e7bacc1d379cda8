"""Report section: activation patching of the residual stream on a task made from the
report prompt (add `section` to SECTIONS)."""

from __future__ import annotations

import html

import torch

from .sections import _png

MAX_POSITIONS = 24  # keeps the sweep cheap: n_layers x positions patches, batched


def _auto_task(model, run):
    """Clean = the report prompt; corrupt = the same prompt with its first token after
    the start replaced by another frequent-looking id; answer = the clean top prediction,
    foil = the corrupted top prediction (or None when they agree)."""
    from ..patching import Task

    length = int(run.lengths[0])
    if length < 3 or length > MAX_POSITIONS:
        return None, f"the prompt has {length} tokens (patching shows 3-{MAX_POSITIONS})"
    clean = run.tokens[:1, :length].cpu()
    corrupt = clean.clone()
    swap = 1
    corrupt[0, swap] = (int(clean[0, swap]) + 1) % model.dims.d_vocab
    with torch.no_grad():
        corrupt_logits = model.run(corrupt).logits[0, -1]
    answer = int(run.logits[0, length - 1].argmax())
    foil = int(corrupt_logits.argmax())
    return Task(clean, corrupt, torch.tensor([answer]), None if foil == answer else torch.tensor([foil])), ""


def section(model, run) -> str:
    """Residual-stream patching heatmap (layers x positions) for an automatic clean /
    corrupt pair built from the report prompt; a short note when it does not apply."""
    if run is None or run.mask is None or not model.has_lm_head:
        return ""
    from ..patching import answer_logit, logit_diff, sweep

    task, why = _auto_task(model, run)
    if task is None:
        return f"<h2>Activation patching</h2><p>Skipped: {html.escape(why)}.</p>"
    metric = logit_diff(task) if task.wrong is not None else answer_logit(task)
    result = sweep(model, task, metric, sweep="resid")
    decode = (lambda t: model.tokenizer.decode([t])) if model.tokenizer is not None else str  # noqa: E731
    swapped = f"{decode(int(task.clean[0, 1]))!r} → {decode(int(task.corrupt[0, 1]))!r}"
    return (
        "<h2>Activation patching</h2><p>Corrupted prompt: the token at position 1 swapped "
        f"({html.escape(swapped)}). Each cell writes the clean <code>blocks.{{l}}.hook_resid_pre</code> at one "
        f"position into the corrupted run; colour: share of the {html.escape(metric.name)} gap restored "
        f"(clean {result.clean_metric:.3f}, corrupted {result.corrupt_metric:.3f}).</p>" + _png(result.plot())
    )
