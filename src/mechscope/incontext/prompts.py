"""Prompts of a task for a model: k-shot (optionally with shuffled labels) and zero-shot,
tokenized (right-padded) with the first token of each query's output; and how often the
model's greedy next token is that token, with or without edits."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from ..edits import Edit
from ..errors import MechscopeError
from .tasks import Task, Template


@dataclass(frozen=True)
class Prompts:
    """Tokenized prompts of one task, right-padded, each with the answer's first token."""

    texts: tuple[str, ...]
    ids: Int[Tensor, "batch pos"]
    mask: Int[Tensor, "batch pos"]
    answers: Int[Tensor, " batch"]
    """First token of each query's output: what the model should say next."""

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def last(self) -> Int[Tensor, " batch"]:
        """Absolute position of each row's last token (the query's end)."""
        return self.mask.sum(-1) - 1

    @property
    def n_tokens(self) -> float:
        """Mean tokens per prompt."""
        return float(self.mask.sum(-1).float().mean())


def answer_ids(model, template: Template, outputs: Sequence[str], single_token: bool = False) -> Tensor:
    """First token of each output as it follows a query (multi-token outputs are scored by
    it; single_token=True refuses them)."""
    tok = model.tokenizer
    if tok is None:
        raise MechscopeError(f"{model.name} has no tokenizer: in-context tasks are text")
    ids = [tok(template.answer_text(y), add_special_tokens=False)["input_ids"] for y in outputs]
    empty = [y for y, i in zip(outputs, ids) if not i]
    if empty:
        raise MechscopeError(f"output {empty[0]!r} has no tokens for {model.name}'s tokenizer")
    several = [y for y, i in zip(outputs, ids) if len(i) > 1]
    if single_token and several:
        raise MechscopeError(
            f"output {several[0]!r} is {len(ids[outputs.index(several[0])])} tokens where one is required "
            f"({len(several)} such outputs): choose single-token outputs, or allow several "
            "(scored by their first token)"
        )
    return torch.tensor([i[0] for i in ids])


def encode(model, texts: Sequence[str], outputs: Sequence[str], template: Template, single_token: bool) -> Prompts:
    inputs = model.tokenize(list(texts))
    return Prompts(
        tuple(texts),
        inputs["input_ids"].cpu(),
        inputs["attention_mask"].cpu(),
        answer_ids(model, template, outputs, single_token),
    )


def _shuffled(demos: list[tuple[str, str]], rng: random.Random) -> list[tuple[str, str]]:
    """The demonstrations with their outputs rotated by a random nonzero step: every
    input gets another demonstration's output (the x -> y mapping is broken)."""
    shift = rng.randrange(1, len(demos)) if len(demos) > 1 else 0
    ys = [y for _, y in demos]
    return [(x, ys[(i + shift) % len(ys)]) for i, (x, _) in enumerate(demos)]


def icl_prompts(
    model,
    task: Task,
    *,
    shots: int,
    n: int,
    seed: int = 0,
    queries: Task | None = None,
    shuffle_labels: bool = False,
    single_token: bool = False,
) -> Prompts:
    """`n` prompts of `shots` demonstrations drawn from `task` and a query drawn from
    `queries` (default: `task`; never one of its own demonstrations). With the same seed,
    shuffle_labels=True gives the same prompts with the demonstrations' outputs rotated."""
    queries = queries or task
    if shots < 0 or n < 1:
        raise MechscopeError(f"need shots >= 0 and at least one prompt (got shots={shots}, n={n})")
    if shots > len(task) - (queries is task):
        raise MechscopeError(
            f"task '{task.name}' has {len(task)} pairs: too few for {shots} demonstrations and a query"
        )
    rng, shuffler = random.Random(seed), random.Random(f"shuffle {seed}")  # same prompts, shuffled or not
    texts, outputs = [], []
    for _ in range(n):
        x, y = rng.choice(queries.pairs)
        pool = [p for p in task.pairs if p[0] != x]
        demos = rng.sample(pool, shots)
        demos = _shuffled(demos, shuffler) if shuffle_labels else demos
        texts.append(task.template.prompt(demos, x))
        outputs.append(y)
    return encode(model, texts, outputs, task.template, single_token)


def zero_shot_prompts(model, task: Task, *, single_token: bool = False) -> Prompts:
    """One prompt per pair: the query alone."""
    texts = [task.template.query(x) for x, _ in task.pairs]
    return encode(model, texts, [y for _, y in task.pairs], task.template, single_token)


def last_logits(model, prompts: Prompts, edits: Sequence[Edit] = ()) -> Tensor:
    """Logits [batch, vocab] at each prompt's last token."""
    with torch.no_grad():
        logits = model.run(prompts.ids, attention_mask=prompts.mask, edits=list(edits)).logits
    return logits[torch.arange(len(prompts)), prompts.last.to(logits.device)].float().cpu()


def accuracy(model, prompts: Prompts, edits: Sequence[Edit] = ()) -> float:
    """Share of prompts whose greedy next token is the answer's first token."""
    return float((last_logits(model, prompts, edits).argmax(-1) == prompts.answers).float().mean())
