"""Direct logit attribution: the final residual stream is a sum of what each component
wrote (embeddings, every attention head, every attention bias, every MLP); with the final
norm's scale frozen at the actual stream (`mechscope.norms.frozen_norm`), the norm is
linear, so each part's share of a logit (or of a logit difference) is exact:

    logit = sum_c <frozen_norm(c), w> + <norm bias, w> + b_U . (e_target - e_vs)
    w = W_U[:, target] - W_U[:, vs]

Soft-capped logits (Gemma 2: tanh(x / cap) * cap) are attributed before the cap, where
they are a sum; `logit` is that pre-cap value and `output_logit` what the model outputs.
Post-LN models (BERT) are refused: their stream is renormalised after every sublayer,
so it is not a sum of what the components wrote.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from ..errors import MechscopeError
from ..norms import frozen_norm
from ..plots import figure, visible
from ..results import Saveable, pandas
from ..tokens import absolute_positions, decode, position_list, require_lm_head, token_ids

log = logging.getLogger(__name__)


@dataclass
class DirectLogitAttribution(Saveable):
    """Each component's direct contribution to a logit (difference), per prompt x position."""

    KIND = "direct_logit_attribution"

    model_name: str
    labels: list[str]
    """'embed', 'pos_embed', 'L{l}H{h}', 'L{l} attn bias', 'L{l} mlp', 'final norm bias', 'unembed bias'."""
    layer_of: list[int]
    """The layer of each component (-1 for embeddings, n_layers for the final biases)."""
    head_of: list[int]
    """The head of each head component, -1 otherwise."""
    contributions: Float[Tensor, "component batch pos"]
    logit: Float[Tensor, "batch pos"]
    """The logit (difference) the components add up to: before any soft-capping."""
    output_logit: Float[Tensor, "batch pos"]
    """The model's own output logit (difference), after soft-capping where the family caps."""
    target_ids: Int[Tensor, " batch"]
    vs_ids: Int[Tensor, " batch"] | None
    tokens: Int[Tensor, "batch pos"]
    positions: Int[Tensor, "batch pos"]
    mask: Bool[Tensor, "batch pos"]
    token_strings: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.token_strings = {int(k): v for k, v in self.token_strings.items()}

    def text(self, token_id) -> str:
        return self.token_strings.get(int(token_id), str(int(token_id)))

    def metric(self, row: int = 0) -> str:
        target = repr(self.text(self.target_ids[row]))
        return f"logit {target}" if self.vs_ids is None else f"logit {target} - logit {self.text(self.vs_ids[row])!r}"

    def top(self, k: int = 10, row: int = 0, pos: int = -1) -> list[tuple[str, float]]:
        """The k components with the largest |contribution| at one lens column."""
        if k < 0:
            raise MechscopeError(f"k must be 0 or more (how many components to list), got {k}")
        values = self.contributions[:, row, pos]
        order = values.abs().argsort(descending=True)[:k]
        return [(self.labels[i], float(values[i])) for i in order]

    def heads(self, row: int = 0, pos: int = -1) -> Float[Tensor, "layer head"]:
        """Head contributions at one column as a [layer, head] grid."""
        n_layers = max(layer for layer, head in zip(self.layer_of, self.head_of) if head >= 0) + 1
        n_heads = max(self.head_of) + 1
        grid = torch.zeros(n_layers, n_heads)
        for i, (layer, head) in enumerate(zip(self.layer_of, self.head_of)):
            if head >= 0:
                grid[layer, head] = self.contributions[i, row, pos]
        return grid

    def plot(self, row: int = 0, pos: int = -1, k: int = 20, ax=None):
        """Horizontal bars of the k largest contributions at one column."""
        top = self.top(k, row, pos)[::-1]
        fig, ax = figure(6.0, 0.25 * len(top) + 1.2) if ax is None else (ax.figure, ax)
        ax.barh(
            [label for label, _ in top], [v for _, v in top], color=["#4c78a8" if v >= 0 else "#e45756" for _, v in top]
        )
        ax.axvline(0, color="black", linewidth=0.6)
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlabel(f"direct contribution to {self.metric(row)} (logit units)")
        ax.set_ylabel("component (LxHy: layer x, head y)")
        column = int(self.positions[row, pos])
        ax.set_title(
            f"{self.model_name}, position {column} ({visible(self.text(self.tokens[row, pos]))}): "
            f"total {float(self.logit[row, pos]):.3f}",
            fontsize=9,
        )
        return fig

    def to_frame(self):
        """One row per (component, prompt, position)."""
        pd = pandas()
        rows = [
            {
                "component": label,
                "layer": self.layer_of[i],
                "head": self.head_of[i],
                "batch": b,
                "pos": int(self.positions[b, p]),
                "contribution": float(self.contributions[i, b, p]),
            }
            for i, label in enumerate(self.labels)
            for b, p in self.mask.nonzero().tolist()
        ]
        return pd.DataFrame(rows)


def _per_prompt(model, tokens, batch: int, what: str) -> Tensor:
    """One id per prompt from one token (broadcast) or one token per prompt."""
    if isinstance(tokens, (str, int)):
        return torch.tensor(token_ids(model, tokens, what) * batch)
    ids = token_ids(model, tokens, what)
    if len(ids) != batch:
        raise MechscopeError(f"{what} has {len(ids)} tokens for {batch} prompts: give one token, or one per prompt")
    return torch.tensor(ids)


def _pick(logits: Tensor, ids: Tensor) -> Tensor:
    """logits[b, p, ids[b]] for every prompt b."""
    return logits.gather(2, ids[:, None, None].expand(-1, logits.shape[1], 1))[..., 0]


def _check_model(model) -> None:
    require_lm_head(model, "direct logit attribution")
    if model.adapter.post_ln:
        raise MechscopeError(
            f"{model.adapter.family} is post-LN (the residual stream is renormalised after each "
            "sublayer), so its final stream is not a sum of components: direct logit attribution "
            "needs a pre-norm model"
        )
    if model.adapter.unembed:
        raise MechscopeError(
            f"{model.adapter.family}'s head transforms the stream before the unembedding: direct "
            "logit attribution needs a linear head"
        )


def _final_norm(model, resid: Tensor):
    """(frozen final norm, its bias or None); identity where the family has none."""
    module = model.module(model.adapter.final_norm) if model.adapter.final_norm else None
    if module is None or isinstance(module, nn.Identity):
        return (lambda h: h), None
    bias = getattr(module, "bias", None)
    return frozen_norm(module, resid.float(), model.adapter.norm_gain_offset), bias


def _components(
    model, run, direction: Tensor, unembed_bias: Tensor
) -> tuple[list[Tensor], list[str], list[int], list[int]]:
    """Every component's contribution [batch, pos] to the logit along `direction` [batch,
    d_model], with its label, layer and head."""
    n_layers = model.dims.n_layers
    resid = run.cache[f"blocks.{n_layers - 1}.hook_resid_post"].float()
    norm, norm_bias = _final_norm(model, resid)
    parts, labels, layers, heads = [], [], [], []

    def add(value: Tensor, label: str, layer: int, head: int = -1) -> None:
        parts.append(value.cpu())
        labels.append(label)
        layers.append(layer)
        heads.append(head)

    def project(x: Tensor) -> Tensor:  # [batch, pos, d_model] -> [batch, pos]
        return torch.einsum("bpd,bd->bp", norm(x.float()), direction.to(x.device))

    resid_pre = run.cache["blocks.0.hook_resid_pre"].float()
    if "hook_pos_embed" in model.table.by_name:
        embed = run.cache["hook_embed"].float()
        add(project(embed), "embed", -1)
        add(project(resid_pre - embed), "pos_embed", -1)
    else:
        add(project(resid_pre), "embed", -1)
    for layer in range(n_layers):
        per_head, bias = model.head_results(run.cache[f"blocks.{layer}.attn.hook_z"].float(), layer)
        by_head = torch.einsum("bphd,bd->hbp", norm(per_head), direction.to(per_head.device))
        for head, value in enumerate(by_head):
            add(value, f"L{layer}H{head}", layer, head)
        add(project(bias.expand_as(per_head[..., 0, :])), f"L{layer} attn bias", layer)
        if f"blocks.{layer}.hook_mlp_out" in model.table.by_name:
            add(project(run.cache[f"blocks.{layer}.hook_mlp_out"]), f"L{layer} mlp", layer)
    zeros = torch.zeros(resid.shape[:2])
    if norm_bias is not None:
        add(zeros + (direction @ norm_bias.float()).cpu()[:, None], "final norm bias", n_layers)
    if model.hf.get_output_embeddings().bias is not None:
        add(zeros + unembed_bias.cpu()[:, None], "unembed bias", n_layers)
    return parts, labels, layers, heads


def _logits(
    model, run, index: Tensor, direction: Tensor, unembed_bias: Tensor, target_ids: Tensor, vs_ids: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(pre-cap logit difference from the final stream, the model's own output difference)."""
    resid = run.cache[f"blocks.{model.dims.n_layers - 1}.hook_resid_post"]
    logit = torch.einsum("bpd,bd->bp", model.final_norm(resid).float(), direction).cpu() + unembed_bias.cpu()[:, None]
    out = run.logits.float().cpu().gather(1, index[..., None].expand(-1, -1, run.logits.shape[-1]))
    return logit, _pick(out, target_ids) - (0 if vs_ids is None else _pick(out, vs_ids))


def direct_logit_attribution(
    model,
    prompts,
    target: str | int | Sequence[str | int],
    vs: str | int | Sequence[str | int] | None = None,
    *,
    positions: int | Sequence[int] | None = None,
    batch_size: int | None = None,
) -> DirectLogitAttribution:
    """Split the logit of `target` (minus that of `vs`, when given) at each position into
    the direct contributions of the components of the final residual stream.

    target / vs: one token (string of one token, or an id) for every prompt, or one per
    prompt. positions: only these positions (negative from each prompt's end); None = all.
    """
    _check_model(model)
    wanted = position_list(positions)
    record = ["blocks.0.hook_resid_pre", f"blocks.{model.dims.n_layers - 1}.hook_resid_post", "blocks.*.attn.hook_z"]
    record += ["blocks.*.hook_mlp_out"] if model.dims.d_mlp else []
    record += ["hook_embed"] if "hook_pos_embed" in model.table.by_name else []
    with torch.no_grad():
        run = model.run(prompts, record=record, positions=wanted, batch_size=batch_size)
        target_ids = _per_prompt(model, target, len(run.tokens), "target")
        vs_ids = None if vs is None else _per_prompt(model, vs, len(run.tokens), "vs")
        scale = model.adapter.logit_scale  # Granite divides its logits, Cohere multiplies them
        w_u, b_u = model.W_U.detach().float() * scale, model.b_U.detach().float() * scale
        direction = w_u[:, target_ids].T - (0 if vs_ids is None else w_u[:, vs_ids].T)  # [batch, d_model]
        unembed_bias = b_u[target_ids] - (0 if vs_ids is None else b_u[vs_ids])  # [batch]
        parts, labels, layers, heads = _components(model, run, direction, unembed_bias)
        absolute, mask = absolute_positions(run, wanted)
        index = absolute.clamp(max=run.tokens.shape[1] - 1)
        logit, output = _logits(model, run, index, direction, unembed_bias, target_ids, vs_ids)
    tokens = run.tokens.cpu().gather(1, index)
    seen = set(tokens[mask].tolist()) | set(target_ids.tolist()) | set([] if vs_ids is None else vs_ids.tolist())
    return DirectLogitAttribution(
        model_name=model.name,
        labels=labels,
        layer_of=layers,
        head_of=heads,
        contributions=torch.stack(parts),
        logit=logit,
        output_logit=output,
        target_ids=target_ids,
        vs_ids=vs_ids,
        tokens=tokens,
        positions=absolute,
        mask=mask,
        token_strings={t: decode(model, t) for t in sorted(seen)},
    )
