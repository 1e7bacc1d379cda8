"""Report section: activation patching of the residual stream on a task made from the
report prompt (add `section` to SECTIONS).

The clean prompt is the report prompt itself; the corrupted one swaps a single token. The
report picks which: among the last `MAX_POSITIONS` tokens, the one whose swap lowers the
log-probability of the model's answer most (all candidates in a few batched forwards).
The sweep then covers that position to the end (earlier positions are the same in both
prompts, so patching them changes nothing), whatever the prompt's length."""

from __future__ import annotations

import html

import torch

from ..plots import visible
from .sections import _png, heading

MAX_POSITIONS = 24
"""The sweep (n_layers x positions patches, batched) and the search for the token to swap
cover at most the prompt's last this many tokens."""
MAX_CONTEXT = 64
"""Longer prompts are patched on their first token (often BOS) and last MAX_CONTEXT - 1
tokens: every patched run reads the whole clean prompt, so its length bounds the cost."""
CHUNK = 8
"""Corrupted candidates per forward pass while searching for the token to swap."""
TITLE = "Activation patching"


def _swap_candidates(model, clean: torch.Tensor, answer: int, base: float) -> tuple[int, torch.Tensor, float]:
    """(position, corrupted ids, drop in log p(answer)) of the best single-token swap among
    the last MAX_POSITIONS positions but the first and the last (the last is where the
    answer is read: swapping it is a different question)."""
    length = clean.shape[1]
    positions = list(range(max(1, length - MAX_POSITIONS), length - 1))
    vocab = model.dims.d_vocab
    with torch.no_grad():
        drops: list[float] = []
        for start in range(0, len(positions), CHUNK):
            chunk = positions[start : start + CHUNK]
            batch = clean.repeat(len(chunk), 1)
            for row, pos in enumerate(chunk):
                batch[row, pos] = (int(clean[0, pos]) + 1) % vocab
            logits = model.run(batch).logits[:, -1].float()
            drops += (base - torch.log_softmax(logits, -1)[:, answer]).tolist()
    best = max(range(len(positions)), key=drops.__getitem__)
    corrupt = clean.clone()
    corrupt[0, positions[best]] = (int(clean[0, positions[best]]) + 1) % vocab
    return positions[best], corrupt, drops[best]


def _clean_ids(run) -> torch.Tensor:
    """The report prompt's ids, or its first and last MAX_CONTEXT - 1 tokens when longer."""
    length = int(run.lengths[0])
    ids = run.tokens[:1, :length].cpu()
    if length <= MAX_CONTEXT:
        return ids
    return torch.cat([ids[:, :1], ids[:, length - MAX_CONTEXT + 1 :]], 1)


def _auto_task(model, run):
    """(task, swapped position, drop in log p(answer), reason when there is no task)."""
    from ..patching import Task

    length = int(run.lengths[0])
    if length < 3:
        return None, 0, 0.0, f"the prompt has {length} token{'s' * (length != 1)}; patching needs at least 3"
    clean = _clean_ids(run)
    with torch.no_grad():
        last = run.logits[0, length - 1].float() if length <= MAX_CONTEXT else model.run(clean).logits[0, -1].float()
    answer = int(last.argmax())
    pos, corrupt, drop = _swap_candidates(model, clean, answer, float(torch.log_softmax(last, -1)[answer]))
    with torch.no_grad():
        foil = int(model.run(corrupt).logits[0, -1].argmax())
    wrong = None if foil == answer else torch.tensor([foil])
    return Task(clean, corrupt, torch.tensor([answer]), wrong), pos, drop, ""


def section(model, run) -> str:
    """Residual-stream patching heatmap (layers x positions) for an automatic clean /
    corrupt pair built from the report prompt; a short note when it does not apply."""
    if run is None or run.mask is None or not model.has_lm_head:
        return ""
    from ..patching import answer_logit, logit_diff, sweep

    what = (
        "where, layer by layer and token by token, the information that decides the model's next token "
        "travels: each cell copies one clean residual-stream vector into a corrupted run and measures how "
        "much of the answer comes back."
    )
    task, pos, drop, why = _auto_task(model, run)
    if task is None:
        return heading(TITLE, what) + f"<p>Skipped: {html.escape(why)}.</p>"
    metric = logit_diff(task) if task.wrong is not None else answer_logit(task)
    length = task.clean.shape[1]
    result = sweep(model, task, metric, sweep="resid", positions=list(range(pos, length)))
    decode = (lambda t: model.tokenizer.decode([t])) if model.tokenizer is not None else str  # noqa: E731
    before, after = decode(int(task.clean[0, pos])), decode(int(task.corrupt[0, pos]))
    searched = length - 1 - max(1, length - MAX_POSITIONS)
    cut = (
        f" The prompt has {int(run.lengths[0]):,} tokens: patching runs on its first token and its last "
        f"{MAX_CONTEXT - 1} (positions below count in that shortened prompt), which bounds the cost."
        if int(run.lengths[0]) > MAX_CONTEXT
        else ""
    )
    weak = (
        " <b>The swap barely moves the answer</b>, so the colours below are mostly noise."
        if abs(result.clean_metric - result.corrupt_metric) < 0.1
        else ""
    )
    return (
        heading(TITLE, what) + f"<p>Corrupted prompt: the token at position {pos} swapped, <span class='tok'>"
        f"{html.escape(visible(before))}</span> → <span class='tok'>{html.escape(visible(after))}</span>: of "
        f"{searched} positions tried, the swap that lowers log p(answer) most ({drop:.2f} nats). Each cell writes "
        "the clean <code>blocks.{l}.hook_resid_pre</code> at one position into the corrupted run; colour: share "
        f"of the {html.escape(metric.name)} gap restored (clean {result.clean_metric:.3f}, corrupted "
        f"{result.corrupt_metric:.3f}; 1 = fully restored). Positions before {pos} are the same in both "
        f"prompts and are left out.{cut}{weak}</p>" + _png(result.plot())
    )
