"""Path patching (Wang et al. 2022, the IOI paper): the effect of sender components on
receiver components through the residual stream only.

Forward 1 runs the clean prompts with the senders' outputs taken from the corrupted run
and every other head (`attn.hook_z`) and MLP (`hook_mlp_out`) frozen at its clean value,
so the only change that reaches anything is the senders' direct write to the residual
stream; it records the receivers' inputs (a head's `hook_q`, `hook_k` or `hook_v`).
Forward 2 runs the clean prompts again with only those receiver inputs replaced and
everything else free, and reads the metric. With receiver "logits" the first forward
alone gives the metric (the senders' direct path to the output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, cast

import torch

from .. import edits as E
from ..errors import MechscopeError
from .metrics import Metric, MetricFn, as_metric
from .sweep import record
from .task import Task

Component = tuple[int, int] | tuple[int, str]
"""(layer, head) for an attention head, (layer, "mlp") for an MLP."""
Receiver = tuple[int, int, str] | str
"""(layer, head, "q"|"k"|"v") for a head's input (head indexes k/v heads for k and v), or "logits"."""


@dataclass(frozen=True)
class PathEffect:
    clean_metric: float
    corrupt_metric: float
    patched_metric: float

    @property
    def change(self) -> float:
        """patched - clean: what the senders' path to the receivers does to the metric."""
        return self.patched_metric - self.clean_metric

    @property
    def normalized(self) -> float:
        """change / (corrupt - clean): 1 = the path carries the whole corruption effect."""
        span = self.corrupt_metric - self.clean_metric
        return self.change / span if abs(span) > 1e-12 else float("nan")


def _check(model, senders: Sequence[Component], receivers: Sequence[Receiver]) -> None:
    if not senders:
        raise MechscopeError("path patching needs at least one sender: (layer, head) or (layer, 'mlp')")
    for s in senders:
        if len(s) != 2 or not 0 <= s[0] < model.dims.n_layers:
            raise MechscopeError(
                f"sender {s!r} must be (layer, head) or (layer, 'mlp') with a layer in 0-{model.dims.n_layers - 1}"
            )
        if s[1] == "mlp" and not model.dims.d_mlp:
            raise MechscopeError(f"sender {s!r}: {model.name} has no MLPs")
        if s[1] != "mlp" and (isinstance(s[1], str) or not 0 <= s[1] < model.dims.n_heads):
            raise MechscopeError(f"sender {s!r}: head must be in 0-{model.dims.n_heads - 1}")
    for r in receivers:
        if r == "logits":
            continue
        if isinstance(r, str) or len(r) != 3 or r[2] not in ("q", "k", "v"):
            raise MechscopeError(f"receiver {r!r} must be (layer, head, 'q'|'k'|'v') or 'logits'")
        if any(r[0] <= s[0] for s in senders):
            raise MechscopeError(f"receiver {r!r} must sit in a later layer than every sender")


def _freeze_edits(model, clean, corrupt, senders: Sequence[Component]) -> list:
    """Every head and MLP at its clean value, the senders at their corrupted value."""
    edits = []
    for layer in range(model.dims.n_layers):
        z = f"blocks.{layer}.attn.hook_z"
        value = clean.cache[z].clone()
        for s_layer, s_head in senders:
            if s_layer == layer and s_head != "mlp":
                value[:, :, s_head] = corrupt.cache[z][:, :, s_head]
        edits.append(E.replace(z, value))
        if model.dims.d_mlp:
            mlp = f"blocks.{layer}.hook_mlp_out"
            sender = (layer, "mlp") in [tuple(s) for s in senders]
            edits.append(E.replace(mlp, (corrupt if sender else clean).cache[mlp]))
    return edits


def path_patch(
    model,
    task: Task,
    metric: Metric | MetricFn,
    senders: Sequence[Component],
    receivers: Sequence[Receiver] = ("logits",),
) -> PathEffect:
    """The metric when the senders' corrupted outputs reach only the receivers (see the module doc)."""
    metric = as_metric(metric)
    # lists (as JSON gives them) become tuples
    senders = [cast(Component, tuple(s)) for s in senders]
    receivers = [r if r == "logits" else cast(Receiver, tuple(r)) for r in receivers]
    _check(model, senders, receivers)
    if "logits" in receivers and len(receivers) > 1:
        raise MechscopeError("give either 'logits' or head inputs as receivers, not both")
    sites = [f"blocks.{layer}.attn.hook_z" for layer in range(model.dims.n_layers)]
    sites += [f"blocks.{layer}.hook_mlp_out" for layer in range(model.dims.n_layers)] if model.dims.d_mlp else []
    clean, corrupt = record(model, task, sites)
    mask = task.attention_mask()
    with torch.no_grad():
        m_clean, m_corrupt = float(metric(clean.logits)), float(metric(corrupt.logits))
        inputs = sorted(
            {f"blocks.{r[0]}.attn.hook_{r[2]}" for r in receivers if r != "logits"}, key=model.table.order.__getitem__
        )
        first = model.run(
            task.clean, attention_mask=mask, record=inputs, edits=_freeze_edits(model, clean, corrupt, senders)
        )
        if receivers == ["logits"]:
            return PathEffect(m_clean, m_corrupt, float(metric(first.logits)))
        edits = [
            E.replace(f"blocks.{layer}.attn.hook_{part}", first.cache[f"blocks.{layer}.attn.hook_{part}"], heads=head)
            for layer, head, part in (r for r in receivers if not isinstance(r, str))
        ]
        second = model.run(task.clean, attention_mask=mask, edits=edits)
    return PathEffect(m_clean, m_corrupt, float(metric(second.logits)))
