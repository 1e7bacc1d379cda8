"""Token energy, token angles and the norm "sphere" of the residual stream, layer by layer
(after Wendler et al. 2024, "Do Llamas Work in English?", §4: latents start far from the
output-token embeddings and move towards them only in the last layers).

What is computed, precisely. Let W_U [d_model, vocab] be the unembedding and g the gain
of the model's final norm. With `fold_norm=True` (the default) the *effective output
embedding* of token t is u_t = C(g * W_U[:, t]), where C removes the mean over d_model
when the final norm centres (LayerNorm) and is the identity otherwise (RMSNorm); the
latent h is read as C(h). This is the space the head actually reads: up to the norm's
scalar 1/rms and its bias, logit_t = <C(h), u_t> (Wendler et al. fold the RMSNorm gain
into U the same way). With `fold_norm=False`, u_t = W_U[:, t] and h is used as is.

- `energy` (token energy): the fraction of the latent's squared norm inside the span of
  the output embeddings of a token set T, ‖P_T h‖² / ‖h‖², where P_T projects onto the
  span of {u_t : t in T} (an orthonormal basis from the SVD of [u_t], singular values
  below `tol` x the largest dropped). It is 1 for any latent built from those output
  embeddings and 0 for one orthogonal to all of them. When the vocabulary is larger
  than d_model the embeddings of all tokens span the whole space and the energy is 1
  for every latent, so restrict T (`tokens=`: e.g. the answer tokens of a task) or keep
  only the top-`rank` singular directions of [u_t] (the directions the head reads most
  strongly); a warning says when the chosen span is the whole space.
- `relative` (the paper-style normalisation against the sphere): ‖U_T^T ĥ‖² divided by its
  mean over unit vectors of R^d_model, which is ‖U_T‖_F² / d_model; ĥ = h / ‖h‖. It is 1 on
  average for a random direction, larger where the latent points where the head reads
  strongly (at most d_model s_max² / ‖U_T‖_F²), and 0 orthogonal to every u_t.
- `angles`: the angle in degrees between C(h) and u_t for chosen target tokens.
- `norm`: ‖h‖, the raw residual stream's norm (the radius of the "norm sphere").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from ..errors import MechscopeError
from ..results import Saveable, pandas
from ..tokens import absolute_positions, decode, position_list, require_lm_head, token_ids
from . import _common as C

log = logging.getLogger(__name__)


def _final_norm(model) -> tuple[Tensor, bool]:
    """(gain [d_model], centres?) of the model's final norm; (ones, False) without one."""
    module = model.module(model.adapter.final_norm) if model.adapter.final_norm else None
    weight = getattr(module, "weight", None) if module is not None else None
    gain = (
        torch.ones(model.dims.d_model)
        if weight is None
        else weight.detach().float().cpu() + model.adapter.norm_gain_offset
    )
    centre = isinstance(module, nn.LayerNorm) or getattr(module, "bias", None) is not None
    return gain, bool(centre)


def effective_unembedding(
    model, token_ids: Sequence[int] | None = None, fold_norm: bool = True
) -> tuple[Float[Tensor, "d_model token"], bool]:
    """Output embeddings u_t as the head reads them (see the module docstring), float64 on CPU,
    and whether latents must be centred to be compared with them."""
    require_lm_head(model, "token energy")
    w_u = model.W_U.detach().cpu().double()
    w_u = w_u if token_ids is None else w_u[:, list(token_ids)]
    if not fold_norm:
        return w_u, False
    gain, centre = _final_norm(model)
    u = w_u * gain.double()[:, None]
    return (u - u.mean(0, keepdim=True) if centre else u), centre


@dataclass
class TokenSpace:
    """The span of a set of output embeddings: a frozen, callable artifact (`token_space`)."""

    basis: Float[Tensor, "d_model rank"]
    """Orthonormal basis of the span."""
    unembed: Float[Tensor, "d_model token"]
    """The effective output embeddings u_t of the token set."""
    centre: bool
    fold_norm: bool = True
    token_ids: Int[Tensor, " token"] | None = None

    def prepare(self, h: Float[Tensor, "... d_model"]) -> Tensor:
        h = h.detach().double().cpu()
        return h - h.mean(-1, keepdim=True) if self.centre else h

    def energy(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        """‖P h‖² / ‖h‖² (0 for a zero latent)."""
        h = self.prepare(h)
        inside = (h @ self.basis).pow(2).sum(-1)
        total = h.pow(2).sum(-1)
        return torch.where(total > 0, inside / total.clamp(min=1e-300), torch.zeros_like(total)).float()

    def relative(self, h: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        """‖U^T ĥ‖² over its mean on the unit sphere, ‖U‖_F² / d_model."""
        h = self.prepare(h)
        unit = h / h.norm(dim=-1, keepdim=True).clamp(min=1e-300)
        sphere = self.unembed.pow(2).sum() / self.unembed.shape[0]
        return ((unit @ self.unembed).pow(2).sum(-1) / sphere).float()

    __call__ = energy


def token_space(
    model,
    *,
    tokens: Sequence[str | int] | None = None,
    rank: int | None = None,
    fold_norm: bool = True,
    tol: float = 1e-6,
) -> TokenSpace:
    """The output-token subspace: the span of the effective output embeddings of `tokens`
    (one token each; None = the whole vocabulary), optionally cut to its top `rank`
    singular directions."""
    ids = token_ids(model, tokens, "token") if tokens is not None else None
    u, centre = effective_unembedding(model, ids, fold_norm)
    left, singular, _ = torch.linalg.svd(u, full_matrices=False)
    available = int((singular > tol * singular[0]).sum()) if singular.numel() and singular[0] > 0 else 0
    if rank is not None:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= available:
            raise MechscopeError(
                f"rank must be an integer from 1 to {available} (the dimension of the token span), got {rank!r}"
            )
        available = rank
    full = model.dims.d_model - int(centre)
    if available >= full:
        log.warning(
            "the chosen output embeddings span the whole residual space (rank %d): token energy is 1 for "
            "every latent; pass tokens= (a token subset) or rank= (top singular directions)",
            available,
        )
    return TokenSpace(
        basis=left[:, :available].contiguous(),
        unembed=u,
        centre=centre,
        fold_norm=fold_norm,
        token_ids=None if ids is None else torch.tensor(ids),
    )


@dataclass
class TokenEnergy(Saveable):
    """Token energy, relative energy, norm and token angles per stream x prompt x position."""

    KIND = "token_energy"

    model_name: str
    layers: list[str]
    sites: list[str]
    tokens: Int[Tensor, "batch pos"]
    positions: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    energy: Float[Tensor, "layer batch pos"]
    """‖P_T h‖² / ‖h‖²: 1 inside the output-token span, 0 orthogonal to it."""
    relative: Float[Tensor, "layer batch pos"]
    """‖U_T^T ĥ‖² / (‖U_T‖_F² / d_model): 1 on average for a random direction."""
    norm: Float[Tensor, "layer batch pos"]
    """‖h‖ of the raw residual stream."""
    rank: int
    """Dimension of the token span used."""
    fold_norm: bool = True
    angles: Float[Tensor, "layer batch pos target"] | None = None
    """Degrees between the (centred) latent and each target's effective output embedding."""
    targets: list[str] = field(default_factory=list)
    target_ids: Int[Tensor, " target"] | None = None

    def summary(self) -> dict[str, Tensor]:
        """Mean and standard deviation over real (prompt, position) columns, per stream."""
        keep = self.mask.flatten()
        out = {}
        for name in ("energy", "relative", "norm"):
            values = getattr(self, name).flatten(1)[:, keep].float()
            out[name], out[name + "_std"] = values.mean(1), values.std(1, correction=0)
        return out

    def plot(self, ax=None):
        """Token energy, relative energy and norm by layer (mean ± std over positions),
        plus the angle to each target when there are targets."""
        panels = 4 if self.angles is not None else 3
        if ax is None:
            from matplotlib.figure import Figure

            fig = Figure(figsize=(6, 1.8 * panels))
            axes = fig.subplots(panels, 1, sharex=True)
        else:
            axes, fig = ax, ax[0].figure
        stats, x = self.summary(), range(len(self.layers))
        for axis, name, label in zip(axes, ("energy", "relative", "norm"), ("token energy", "relative energy", "‖h‖")):
            mean, std = stats[name].numpy(), stats[name + "_std"].numpy()
            axis.plot(x, mean, marker="o", color="#009E73")
            axis.fill_between(x, mean - std, mean + std, color="#009E73", alpha=0.2)
            axis.set_ylabel(label, fontsize=8)
        if self.angles is not None:
            keep = self.mask.flatten()
            for ti, target in enumerate(self.targets):
                axes[3].plot(
                    x, self.angles[..., ti].flatten(1)[:, keep].mean(1).numpy(), marker="o", label=repr(target)
                )
            axes[3].set_ylabel("angle (°)", fontsize=8)
            axes[3].legend(fontsize=7)
        axes[-1].set_xticks(list(x), self.layers, rotation=60, fontsize=8)
        axes[0].set_title(f"token energy (span rank {self.rank}): {self.model_name}", fontsize=9)
        return fig

    def to_frame(self):
        pd = pandas()
        rows = []
        for li, label in enumerate(self.layers):
            for b, p in self.mask.nonzero().tolist():
                row = {
                    "layer": label,
                    "batch": b,
                    "pos": int(self.positions[b, p]),
                    "energy": float(self.energy[li, b, p]),
                    "relative": float(self.relative[li, b, p]),
                    "norm": float(self.norm[li, b, p]),
                }
                for ti, target in enumerate(self.targets):
                    assert self.angles is not None  # there are targets
                    row[f"angle[{target}]"] = float(self.angles[li, b, p, ti])
                rows.append(row)
        return pd.DataFrame(rows)


def token_energy(
    model,
    prompts,
    *,
    positions: int | Sequence[int] | None = None,
    tokens: Sequence[str | int] | None = None,
    rank: int | None = None,
    targets: Sequence[str | int] | str | int | None = None,
    fold_norm: bool = True,
    include_mid: bool = False,
    layers: Sequence[int] | int | None = None,
    space: TokenSpace | None = None,
    batch_size: int | None = None,
) -> TokenEnergy:
    """Token energy of every residual stream of `prompts` (see the module docstring).

    tokens / rank / fold_norm choose the token span (or pass a ready `space`); targets:
    tokens whose angle to the latent is reported; positions, include_mid, layers and
    batch_size as in `logit_lens`.
    """
    space = space or token_space(model, tokens=tokens, rank=rank, fold_norm=fold_norm)
    target_ids = token_ids(model, targets, "target") if targets is not None else []
    wanted = position_list(positions)
    chosen = C.streams(model, include_mid=include_mid, layers=layers)
    run = C.record(model, prompts, [s.site for s in chosen], wanted, batch_size)
    absolute, mask = absolute_positions(run, wanted)
    stack = torch.stack([run.cache[s.site] for s in chosen])  # [layer, batch, pos, d_model]
    angles = None
    if target_ids:
        u, _ = effective_unembedding(model, target_ids, space.fold_norm)
        h = space.prepare(stack)
        cos = (h @ u) / (h.norm(dim=-1, keepdim=True) * u.norm(dim=0)).clamp(min=1e-300)
        angles = torch.rad2deg(torch.arccos(cos.clamp(-1, 1))).float()
    return TokenEnergy(
        model_name=model.name,
        layers=[s.label for s in chosen],
        sites=[s.site for s in chosen],
        tokens=run.tokens.cpu().gather(1, absolute.clamp(max=run.tokens.shape[1] - 1)),
        positions=absolute,
        mask=mask,
        energy=space.energy(stack),
        relative=space.relative(stack),
        norm=stack.detach().float().norm(dim=-1).cpu(),
        rank=space.basis.shape[1],
        fold_norm=space.fold_norm,
        angles=angles,
        targets=[decode(model, t) for t in target_ids],
        target_ids=torch.tensor(target_ids, dtype=torch.long) if target_ids else None,
    )
