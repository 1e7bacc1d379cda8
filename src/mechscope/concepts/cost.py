"""What erasure costs: the model's next-token loss on held-out text with and without the
eraser's edits, and a fresh probe's held-out accuracy before and after.

    cost = erasure_cost(model, eraser, texts, labels)
    cost["loss_after"] - cost["loss_before"], cost["probes"]["blocks.1.hook_resid_post"]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .collect import DEFAULT_CONTEXT, collect, encode
from .erasure import Eraser
from .labels import Labeller


def lm_loss(model, texts: Sequence[str], *, edits=(), batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats) over every predicted token of `texts`
    (cut into windows of the model's context), with `edits` applied."""
    context = model.context_length or DEFAULT_CONTEXT
    windows = [e.ids[i : i + context] for e in (encode(model, t) for t in texts) for i in range(0, len(e.ids), context)]
    windows = [w for w in windows if len(w) > 1]
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        part = windows[i : i + batch_size]
        width = max(len(w) for w in part)
        ids = torch.zeros(len(part), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, w in enumerate(part):
            ids[row, : len(w)], mask[row, : len(w)] = torch.tensor(w), 1
        logits = model.run(ids, attention_mask=mask, edits=edits).logits.float()
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten().to(logits.device), reduction="none")
        keep = mask[:, 1:].flatten().bool().to(loss.device)
        total, count = total + float(loss[keep].sum()), count + int(keep.sum())
    return total / max(count, 1)


def erasure_cost(
    model,
    eraser: Eraser,
    texts: Sequence[str],
    labels: Labeller | Sequence | None = None,
    *,
    positions=None,
    batch_size: int = 16,
    **probe_options,
) -> dict:
    """Loss with and without the eraser on `texts`; with `labels`, also a fresh logistic
    probe's held-out accuracy at each erased site before and after (and the majority rate)."""
    from .probe import probe

    eraser.check(model)
    before = lm_loss(model, texts, batch_size=batch_size)
    after = lm_loss(model, texts, edits=eraser.edits(), batch_size=batch_size)
    out: dict = {"loss_before": before, "loss_after": after, "loss_cost": after - before, "probes": {}}
    if labels is None:
        return out
    plain = collect(model, texts, labels, eraser.sites, positions=positions, batch_size=batch_size)
    with model.edit(*eraser.edits()):
        erased = collect(model, texts, labels, eraser.sites, positions=positions, batch_size=batch_size)
    for site in eraser.sites:
        a = probe(plain, site, **probe_options).metrics
        b = probe(erased, site, **probe_options).metrics
        out["probes"][site] = {"before": a["test_accuracy"], "after": b["test_accuracy"], "majority": b["majority"]}
    return out
