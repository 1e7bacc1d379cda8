"""Metrics: a scalar of the model's logits that patching compares across runs.

A metric is any callable ``f(logits [batch, pos, vocab]) -> scalar tensor``, made of torch
operations so that gradients flow through it (attribution patching and circuit discovery
backpropagate through it). The task-aware ones below are built from a `Task` (which says
where each row's logits are read and what the answers are) and average over the batch:

- ``logit_diff(task)``: logit[answer] - logit[wrong];
- ``answer_prob(task)``: softmax probability of the answer;
- ``answer_logit(task)``: the answer's logit;
- ``cross_entropy(task)``: -log p(answer) (lower is better);
- ``kl_to_clean(clean_logits, task)``: KL(clean || patched) of the next-token distribution
  (0 for the clean run; larger is further from it).

`Metric` wraps each one (and any user callable, through `as_metric`) with a name and a
check that the value is a finite scalar: NaN or inf raise a `MechscopeError` naming the
metric instead of silently poisoning a sweep. The task metrics also declare the one
position per row they read (`Metric.positions`), so that sweeps may run the unembedding
there only and hand them logits [batch, vocab].
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import MechscopeError
from .task import Task

MetricFn = Callable[[Float[Tensor, "batch pos vocab"]], Float[Tensor, ""]]


class Metric:
    """A named, checked metric: ``metric(logits [batch, pos, vocab]) -> scalar``."""

    def __init__(self, fn: MetricFn, name: str, higher_is_better: bool = True, positions: Tensor | None = None):
        self.fn, self.name, self.higher_is_better = fn, name, higher_is_better
        self.positions = positions
        """[batch] absolute positions: the only logits the metric reads (it then also accepts
        logits [batch, vocab] cut to them); None when it may read any position."""

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, ""]:
        value = self.fn(logits)
        if not isinstance(value, Tensor):
            if isinstance(value, (int, float)):
                value = torch.tensor(float(value))
            else:
                raise MechscopeError(
                    f"metric '{self.name}' returned {type(value).__name__}: it must return a "
                    "scalar tensor (a float is accepted but carries no gradient)"
                )
        if value.numel() != 1:
            raise MechscopeError(
                f"metric '{self.name}' returned a tensor of shape {tuple(value.shape)}: it must "
                "return one number (average over the batch, e.g. `.mean()`)"
            )
        value = value.reshape(())
        if not bool(torch.isfinite(value.detach())):
            raise MechscopeError(
                f"metric '{self.name}' returned {float(value.detach())}: check it for log(0), division by "
                "zero or overflow (a logit difference in float16?)"
            )
        return value

    def __repr__(self) -> str:
        return f"Metric({self.name!r})"


def as_metric(metric: Metric | MetricFn, name: str | None = None) -> Metric:
    """A `Metric` from a `Metric` (returned as is) or a plain callable of the logits."""
    if isinstance(metric, Metric):
        return metric
    if not callable(metric):
        raise MechscopeError(f"metric must be callable (logits [batch, pos, vocab] -> scalar), got {metric!r}")
    return Metric(metric, name or getattr(metric, "__name__", None) or type(metric).__name__)


def _rows(task: Task, logits: Tensor) -> Tensor:
    return task.read(logits).float()


def _pick(values: Tensor, ids: Tensor) -> Tensor:
    return values.gather(-1, ids.to(values.device)[:, None])[:, 0]


def logit_diff(task: Task) -> Metric:
    """Mean over prompts of logit[answer] - logit[wrong] at the task's read position."""
    if task.wrong is None:
        raise MechscopeError(
            "logit_diff needs the task's wrong tokens (a foil per prompt): give `wrong`, or use "
            "answer_prob / answer_logit"
        )
    wrong = task.wrong

    def fn(logits):
        rows = _rows(task, logits)
        return (_pick(rows, task.answers) - _pick(rows, wrong)).mean()

    return Metric(fn, "logit_diff", positions=task.index())


def answer_logit(task: Task) -> Metric:
    """Mean logit of the answer."""
    return Metric(
        lambda logits: _pick(_rows(task, logits), task.answers).mean(), "answer_logit", positions=task.index()
    )


def answer_prob(task: Task) -> Metric:
    """Mean softmax probability of the answer."""
    return Metric(
        lambda logits: _pick(_rows(task, logits).softmax(-1), task.answers).mean(),
        "answer_prob",
        positions=task.index(),
    )


def cross_entropy(task: Task) -> Metric:
    """Mean -log p(answer): lower is better."""
    return Metric(
        lambda logits: -_pick(_rows(task, logits).log_softmax(-1), task.answers).mean(),
        "cross_entropy",
        higher_is_better=False,
        positions=task.index(),
    )


def kl_to_clean(
    clean_logits: Float[Tensor, "batch pos vocab"] | Float[Tensor, "batch vocab"], task: Task | None = None
) -> Metric:
    """Mean KL(clean || patched) of the next-token distribution at the task's read
    position (at the last position of the padded axis without a task). 0 on the clean run."""
    reader = (lambda x: x[:, -1] if x.dim() == 3 else x) if task is None else task.read  # noqa: E731
    clean_logp = reader(clean_logits.detach()).float().log_softmax(-1)

    def fn(logits):
        logp = reader(logits).float().log_softmax(-1)
        ref = clean_logp.to(logp.device)
        return (ref.exp() * (ref - logp)).sum(-1).mean()

    return Metric(fn, "kl_to_clean", higher_is_better=False, positions=None if task is None else task.index())


METRICS = {
    "logit_diff": logit_diff,
    "answer_prob": answer_prob,
    "answer_logit": answer_logit,
    "cross_entropy": cross_entropy,
}
"""Task metrics by name (for the CLI); kl_to_clean needs the clean logits and is built by the caller."""


def by_name(name: str, task: Task, clean_logits: Tensor | None = None) -> Metric:
    """A task metric from its name: logit_diff, answer_prob, answer_logit, cross_entropy, kl_to_clean."""
    if name == "kl_to_clean":
        if clean_logits is None:
            raise MechscopeError("kl_to_clean needs the clean logits")
        return kl_to_clean(clean_logits, task)
    if name not in METRICS:
        raise MechscopeError(f"unknown metric {name!r}: choose one of {sorted([*METRICS, 'kl_to_clean'])}")
    return METRICS[name](task)
