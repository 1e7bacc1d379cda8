"""Per-sample Jacobians of an object representation with respect to a subject
representation (Hernandez et al. 2023): o = the `object_site` activation at each prompt's
last token, s = the `subject_site` activation at the subject's last token; J = ∂o/∂s.

One forward carries the whole batch (s replaced by a leaf tensor that needs gradients);
the rows of every sample's J come from one batched backward (`is_grads_batched`, torch's
vmap over the backward pass): a sample's o depends only on its own s, so the gradient of
Σ_b o_b[i] with respect to s_b is row i of J_b."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .. import edits as E
from ..errors import MechscopeError
from ..patching import subject_positions


@dataclass(frozen=True)
class Encoded:
    """Tokenized relation samples: ids and mask (right-padded), the subject's last token
    and each prompt's last token."""

    ids: Int[Tensor, "batch pos"]
    mask: Int[Tensor, "batch pos"]
    subject: Int[Tensor, " batch"]
    last: Int[Tensor, " batch"]

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, index) -> Encoded:
        return Encoded(self.ids[index], self.mask[index], self.subject[index], self.last[index])


def encode_samples(model, prompts: Sequence[str], subjects: Sequence[str]) -> Encoded:
    """Token ids and positions; a subject missing from its prompt is a one-line error."""
    if len(prompts) != len(subjects) or not prompts:
        raise MechscopeError(f"give one subject per prompt (got {len(prompts)} prompts, {len(subjects)} subjects)")
    inputs = model.tokenize(list(prompts))
    ids, mask = inputs["input_ids"].cpu(), inputs["attention_mask"].cpu()
    last = mask.sum(-1) - 1
    subject = []
    for row, (prompt, subj) in enumerate(zip(prompts, subjects)):
        try:
            positions = subject_positions(model, ids[row, : int(last[row]) + 1], subj)
        except Exception as err:  # the patching helper says what was wrong
            raise MechscopeError(f"sample {row}: {str(err).splitlines()[0]}") from None
        subject.append(positions[-1])
    return Encoded(ids, mask, torch.tensor(subject), last)


def representations(model, data: Encoded, subject_site: str, object_site: str) -> tuple[Tensor, Tensor, Tensor]:
    """(s [batch, d_s], o [batch, d_o], logits at the last token [batch, vocab]), no gradients."""
    rows = torch.arange(len(data))
    with torch.no_grad():
        run = model.run(data.ids, attention_mask=data.mask, record=[subject_site, object_site])
    s = run.cache[subject_site][rows, data.subject.to(run.cache[subject_site].device)]
    o = run.cache[object_site][rows, data.last.to(run.cache[object_site].device)]
    logits = run.logits[rows, data.last.to(run.logits.device)]
    return s.float().cpu(), o.float().cpu(), logits.float().cpu()


def write_subject(subject_site: str, data: Encoded, s: Tensor) -> E.Edit:
    """An edit writing s [batch, d_s] at each row's subject position (differentiably)."""
    rows = torch.arange(len(data))

    def fn(x: Tensor) -> Tensor:
        return x.index_put((rows.to(x.device), data.subject.to(x.device)), s.to(x.dtype))

    return E.replace(subject_site, fn)


def objects_from(model, data: Encoded, subject_site: str, object_site: str, s: Tensor, grad: bool) -> Tensor:
    """o [batch, d_o] at the last token when the subject representation is s."""
    run = model.run(
        data.ids, attention_mask=data.mask, record=object_site, edits=[write_subject(subject_site, data, s)], grad=grad
    )
    value = run.cache[object_site]
    return value[torch.arange(len(data)), data.last.to(value.device)]


def jacobians(
    model, data: Encoded, subject_site: str, object_site: str
) -> tuple[Float[Tensor, "batch d_o d_s"], Float[Tensor, "batch d_s"], Float[Tensor, "batch d_o"]]:
    """(J, s, o) for every sample, batched (see the module docstring)."""
    s0, _, _ = representations(model, data, subject_site, object_site)
    param = next(model.hf.parameters()) if hasattr(model, "hf") else None
    s = s0.to(device=model.device, dtype=param.dtype if param is not None else s0.dtype).requires_grad_(True)
    o = objects_from(model, data, subject_site, object_site, s, grad=True)
    d_o = o.shape[-1]
    basis = torch.eye(d_o, device=o.device, dtype=o.dtype)[:, None, :].expand(d_o, len(data), d_o)
    (rows,) = torch.autograd.grad(o, s, grad_outputs=basis, is_grads_batched=True)  # [d_o, batch, d_s]
    return rows.permute(1, 0, 2).float().cpu(), s0, o.detach().float().cpu()


def jacobians_one_by_one(model, data: Encoded, subject_site: str, object_site: str) -> Tensor:
    """The same J with `torch.autograd.functional.jacobian`, one sample at a time (the
    benchmark's baseline)."""
    s0, _, _ = representations(model, data, subject_site, object_site)
    out = []
    for row in range(len(data)):
        one = data.rows(slice(row, row + 1))
        fn = lambda s, one=one: objects_from(model, one, subject_site, object_site, s[None], grad=True)[0]  # noqa: E731
        out.append(torch.autograd.functional.jacobian(fn, s0[row].to(model.device)).float().cpu())
    return torch.stack(out)
