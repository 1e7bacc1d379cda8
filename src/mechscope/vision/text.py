"""Integrated Gradients for a language model's next-token prediction, over its token
embeddings (`hook_embed`): the same `attribute` call that explains an image classifier
explains which tokens of a prompt made the model predict a token.

The path runs from a baseline to the prompt's embeddings, replaced at `hook_embed` through
mechscope's edits (so positional embeddings, held edits and every adapter work as in a plain
run); attributions are summed over d_model into one score per token. The default baseline is
the mean token embedding at every position, not zero: the first RMSNorm/LayerNorm is scale
invariant, so along a path from zero the model is constant except for a jump next to zero,
which IG's quadrature cannot integrate (on zoo:pycode the completeness gap is 14% from zero
at 50 steps, 3e-6 from the mean embedding).
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients
from torch import Tensor

from .. import edits
from ..errors import MechscopeError
from ..tokens import token_ids


def _baseline(model, embed: Tensor, baseline) -> Tensor:
    """'mean' (None): the mean token embedding; 'zero'; a one-token string; or a tensor."""
    if baseline is None or baseline == "mean":
        return model.W_E.detach().mean(0).to(embed).expand_as(embed).clone()
    if isinstance(baseline, str) and baseline == "zero":
        return torch.zeros_like(embed)
    if isinstance(baseline, str):
        return model.W_E.detach()[token_ids(model, baseline, "baseline token")[0]].to(embed).expand_as(embed).clone()
    if isinstance(baseline, Tensor) and baseline.shape[-1] == embed.shape[-1]:
        return baseline.to(embed).expand_as(embed).clone()
    raise MechscopeError(
        f"a text baseline is 'mean', 'zero', a one-token string or a [d_model={embed.shape[-1]}] tensor, "
        f"got {baseline!r}"
    )


def attribute_text(model, text, target=None, *, steps: int = 50, baseline=None, internal_batch_size: int | None = None):
    """IG of the logit of `target` (a one-token string or id; None = the predicted token) at
    the prompt's last position, per token of the prompt, from `baseline` (see `_baseline`)."""
    from .attribution import Attribution

    if not isinstance(text, str) or not text:
        raise MechscopeError("a language model is explained for one prompt: give inputs as a non-empty string")
    if "hook_embed" not in {s.name for s in model.sites}:
        raise MechscopeError(f"{model.name} has no hook_embed site to integrate over")
    ids = model.tokenize(text)["input_ids"][:1]
    run = model.run(ids, record="hook_embed")
    embed = run.cache["hook_embed"]  # [1, pos, d_model]
    last = run.logits[0, -1]
    tid = int(last.argmax()) if target is None else token_ids(model, target)[0]

    def forward(e: Tensor) -> Tensor:
        copies = ids.expand(len(e), -1)
        out = model.run(copies, edits=[edits.replace("hook_embed", e)], grad=torch.is_grad_enabled())
        return out.logits[:, -1, :]

    base = _baseline(model, embed, baseline)
    attr, delta = IntegratedGradients(forward).attribute(
        embed,
        baselines=base,
        target=tid,
        n_steps=steps,
        internal_batch_size=internal_batch_size,
        return_convergence_delta=True,
    )
    with torch.no_grad():
        diff = (forward(torch.cat([embed, base]))[:, tid] @ torch.tensor([1.0, -1.0]).to(embed)).reshape(1)
    tokens = [model.tokenizer.decode([int(t)]) for t in ids[0]] if model.tokenizer is not None else None
    return Attribution(
        "ig",
        model.name,
        True,
        torch.tensor([tid]),
        attr.sum(-1).detach().cpu(),
        ids.cpu(),
        "hook_embed",
        attr.detach().cpu(),
        delta.detach().cpu(),
        diff.cpu(),
        tokens=tokens or [str(int(t)) for t in ids[0]],
    )
