"""Labels from the model itself: is its prediction right?

- `next_token_correctness(model, texts, sites)`: at every position, "the model's top-1
  next token equals the token that follows" (the last position of a window has no label).
- `answer_correctness(model, prompts, references, sites)`: per prompt, "the greedy answer
  matches the reference" (exact match of the stripped first line, or `match(answer, ref)`).

Both return the activations (`Labelled`, classes ("wrong", "right")) and the baselines a
user would compare a probe with: the model's max softmax probability and the entropy of
its next-token distribution at the same position."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import MechscopeError
from .collect import DEFAULT_CONTEXT, collect, encode
from .labelled import Labelled, check_finite

CLASSES = ("wrong", "right")


@dataclass
class Correctness:
    """Labelled activations (1 = right) with the output-based baselines per row."""

    data: Labelled
    max_prob: Float[Tensor, " row"]
    entropy: Float[Tensor, " row"]


def _baselines(logits: Tensor) -> tuple[Tensor, Tensor]:
    logp = logits.float().log_softmax(-1)
    return logp.max(-1).values.exp(), -(logp.exp() * logp).sum(-1)


def next_token_correctness(
    model, texts: Sequence[str], sites: str | Sequence[str], *, batch_size: int = 16, progress: bool = False
) -> Correctness:
    """Activations at `sites` of every position that has a next token, labelled right/wrong."""
    from tqdm.auto import tqdm

    from ..dictionary.source import resolve_sites

    names = resolve_sites(model, sites)
    context = model.context_length or DEFAULT_CONTEXT
    if isinstance(texts, str) or not texts:
        raise MechscopeError("texts must be a non-empty list of strings")
    pieces = [
        (i, e.ids[s : s + context])
        for i, e in enumerate(encode(model, t) for t in texts)
        for s in range(0, len(e.ids), context)
    ]
    pieces = [(i, w) for i, w in pieces if len(w) > 1]
    if not pieces:
        raise MechscopeError("every text is a single token: give longer texts (the label needs a next token)")
    acts: dict[str, list[Tensor]] = {s: [] for s in names}
    labels, groups, owners, probs, ents = [], [], [], [], []
    for b in tqdm(range(0, len(pieces), batch_size), desc="labelling", disable=not progress):
        part = pieces[b : b + batch_size]
        width = max(len(w) for _, w in part)
        ids = torch.zeros(len(part), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (_, w) in enumerate(part):
            ids[row, : len(w)], mask[row, : len(w)] = torch.tensor(w), 1
        run = model.run(ids, attention_mask=mask, record=names)
        logits = run.logits[:, :-1].cpu()
        keep = mask[:, 1:] == 1  # a position is labelled when a real token follows it
        labels.append((logits.argmax(-1) == ids[:, 1:])[keep].long())
        p, h = _baselines(logits[keep])
        probs.append(p)
        ents.append(h)
        groups.append(ids[:, :-1][keep])
        owners.append(torch.tensor([i for i, _ in part])[:, None].expand_as(keep)[keep])
        for s in names:
            acts[s].append(run.cache[s][:, :-1].flatten(2).cpu().float()[keep])
    store = {s: torch.cat(v) for s, v in acts.items()}
    for s, a in store.items():
        check_finite(a, s)
    y = torch.cat(labels)
    data = Labelled(model.name, names, CLASSES, y, torch.cat(groups), torch.cat(owners), store, torch.arange(len(y)))
    return Correctness(data, torch.cat(probs), torch.cat(ents))


def _exact(answer: str, reference: str) -> bool:
    first = answer.strip().splitlines()[0].strip() if answer.strip() else ""
    return first == reference.strip()


def answer_correctness(
    model,
    prompts: Sequence[str],
    references: Sequence[str],
    sites: str | Sequence[str],
    *,
    match: Callable[[str, str], bool] | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 16,
) -> Correctness:
    """Activations at the last prompt token, labelled by whether the greedy answer matches."""
    if len(prompts) != len(references) or not prompts:
        raise MechscopeError(f"{len(prompts)} prompts for {len(references)} references: give one reference per prompt")
    match = match or _exact
    right = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        outputs = model.generate(chunk, max_new_tokens=max_new_tokens)
        right += [
            bool(match(out[len(p) :], ref)) for p, out, ref in zip(chunk, outputs, references[i : i + batch_size])
        ]
    data = collect(model, list(prompts), right, sites, positions=-1, batch_size=batch_size)
    data = data.with_labels(torch.tensor([data.classes[v] == "True" for v in data.labels.tolist()]).long(), CLASSES)
    run = model.run(list(prompts), positions=-1, batch_size=batch_size)
    last = run.logits[torch.arange(len(prompts)), run.lengths - 1]
    p, h = _baselines(last.cpu())
    return Correctness(data, p, h)
