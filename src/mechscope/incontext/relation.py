"""Linear relational embeddings (Hernandez et al. 2023): the relation a model applies,
as one affine map from subject to object representation.

`relation(model, prompts, subjects, subject_site, object_site)` takes per-sample
Jacobians J = ∂o/∂s and biases b = o − J s on the fitting samples (`jacobians`), and the
LRE o ≈ β·mean(J) s + mean(b). On held-out samples it measures **faithfulness** (decoding
LRE(s) through the model's final norm and unembedding gives the model's own top-1 next
token) against the most-frequent-object baseline, and **causality** (writing
s + W⁺ᵣ(o′ − o), W = β·J with a rank-r pseudo-inverse, at the subject flips the model's
output to the other sample's object), swept over β and rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import MechscopeError
from ..results import Saveable
from .jacobians import Encoded, encode_samples, jacobians, representations, write_subject

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinearRelation(Saveable):
    """The applied LRE: o = weight @ s + bias (weight already holds β)."""

    KIND: ClassVar[str] = "linear_relation"
    weight: Float[Tensor, "d_o d_s"]
    bias: Float[Tensor, " d_o"]
    subject_site: str
    object_site: str

    def __call__(self, s: Float[Tensor, "... d_s"]) -> Float[Tensor, "... d_o"]:
        return s @ self.weight.T + self.bias

    def inverse(self, rank: int) -> Float[Tensor, "d_s d_o"]:
        """Rank-r pseudo-inverse of the weight (its top r singular directions)."""
        u, sv, vh = torch.linalg.svd(self.weight, full_matrices=False)
        r = max(1, min(rank, int((sv > sv[0] * 1e-6).sum())))
        return vh[:r].T @ torch.diag(1 / sv[:r]) @ u[:, :r].T


@dataclass(frozen=True)
class RelationResult(Saveable):
    """What `relation` measured; `relation_map()` is the LRE at the chosen β."""

    KIND: ClassVar[str] = "relation_result"
    name: str
    model: str
    subject_site: str
    object_site: str
    beta: float
    rank: int
    weight: Float[Tensor, "d_o d_s"]
    bias: Float[Tensor, " d_o"]
    faithfulness: float
    causality: float
    baseline: float
    """Faithfulness of always answering the fitting samples' most frequent object."""
    betas: Float[Tensor, " beta"]
    faithfulness_by_beta: Float[Tensor, " beta"]
    ranks: Float[Tensor, " rank"]
    causality_by_rank: Float[Tensor, " rank"]
    n_fit: int
    n_test: int

    def relation_map(self) -> LinearRelation:
        return LinearRelation(self.weight, self.bias, self.subject_site, self.object_site)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "model": self.model,
            "subject_site": self.subject_site,
            "object_site": self.object_site,
            "beta": self.beta,
            "faithfulness": self.faithfulness,
            "most_frequent_object_baseline": self.baseline,
            "rank": self.rank,
            "causality": self.causality,
            "faithfulness_by_beta": dict(zip(self.betas.tolist(), self.faithfulness_by_beta.tolist())),
            "causality_by_rank": dict(zip([int(r) for r in self.ranks.tolist()], self.causality_by_rank.tolist())),
            "n_fit": self.n_fit,
            "n_test": self.n_test,
        }

    def plot(self):
        from .figures import relation_figure

        return relation_figure(self)


def decode(model, object_site: str, o: Tensor) -> Tensor:
    """Top-1 token of an object representation: through the final norm and the unembedding
    (only the unembedding for `ln_final.hook_normalized`)."""
    o = o.to(model.device)
    with torch.no_grad():
        logits = model.unembed(o) if object_site.startswith("ln_final") else model.to_logits(o)
    return logits.argmax(-1).cpu()


def causality(model, data: Encoded, lre: LinearRelation, s: Tensor, o: Tensor, own: Tensor, rank: int) -> float:
    """Share of (sample i, target j) pairs with different outputs where writing
    s_i + W⁺ᵣ(o_j − o_i) at i's subject makes the model answer j's output."""
    n = len(data)
    target = torch.roll(torch.arange(n), 1)  # each sample's neighbour as its target
    keep = own[target] != own
    if not bool(keep.any()):
        return float("nan")
    delta = (o[target] - o) @ lre.inverse(rank).T
    with torch.no_grad():
        run_logits = _edited_logits(model, data, lre.subject_site, s + delta)
    return float((run_logits.argmax(-1) == own[target])[keep].float().mean())


def _edited_logits(model, data: Encoded, subject_site: str, s: Tensor) -> Tensor:
    edit = write_subject(subject_site, data, s.to(model.device))
    logits = model.run(data.ids, attention_mask=data.mask, edits=[edit]).logits
    return logits[torch.arange(len(data)), data.last.to(logits.device)].float().cpu()


def relation(
    model,
    prompts: Sequence[str],
    subjects: Sequence[str],
    subject_site: str,
    object_site: str,
    *,
    name: str = "relation",
    beta: float = 1.0,
    betas: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    ranks: Sequence[int] | None = None,
    n_fit: int | None = None,
) -> RelationResult:
    """Fit an LRE on the first `n_fit` samples (default half) and measure it on the rest."""
    for site in (subject_site, object_site):
        model.table[site]  # an unknown site fails here, in one line
    data = encode_samples(model, prompts, subjects)
    n_fit = len(data) // 2 if n_fit is None else n_fit
    if not 1 <= n_fit < len(data):
        raise MechscopeError(f"need at least one fitting and one held-out sample (got {len(data)}, n_fit={n_fit})")
    fit, test = data.rows(slice(0, n_fit)), data.rows(slice(n_fit, None))
    J, s, o = jacobians(model, fit, subject_site, object_site)
    mean_j, mean_b = J.mean(0), (o - torch.einsum("bij,bj->bi", J, s)).mean(0)
    s_test, o_test, logits = representations(model, test, subject_site, object_site)
    own = logits.argmax(-1)
    _, _, fit_logits = representations(model, fit, subject_site, object_site)
    frequent = int(fit_logits.argmax(-1).mode().values)
    faith = [float((decode(model, object_site, s_test @ (b * mean_j).T + mean_b) == own).float().mean()) for b in betas]
    lre = LinearRelation(beta * mean_j, mean_b, subject_site, object_site)
    ranks = list(ranks) if ranks is not None else _default_ranks(min(mean_j.shape))
    caus = [causality(model, test, lre, s_test, o_test, own, r) for r in ranks]
    best = max(range(len(ranks)), key=lambda i: caus[i] if caus[i] == caus[i] else -1.0)
    return RelationResult(
        name,
        model.name,
        subject_site,
        object_site,
        beta,
        ranks[best],
        lre.weight,
        lre.bias,
        float((decode(model, object_site, lre(s_test)) == own).float().mean()),
        caus[best],
        float((own == frequent).float().mean()),
        torch.tensor(list(betas), dtype=torch.float),
        torch.tensor(faith),
        torch.tensor(ranks, dtype=torch.float),
        torch.tensor(caus),
        len(fit),
        len(test),
    )


def _default_ranks(dim: int) -> list[int]:
    out, r = [], 1
    while r < dim:
        out.append(r)
        r *= 2
    return [*out, dim]
