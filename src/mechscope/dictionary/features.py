"""Reading a dictionary's latents on a model: activations, top-activating contexts, the
logits a latent's decoder row promotes, and steering directions."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import MechscopeError
from ..plots import figure, visible
from ..results import Saveable
from ..tokens import decode
from .attach import site_of
from .base import SparseCoder


def _features(coder: SparseCoder, features: int | Sequence[int] | None) -> list[int]:
    wanted = (
        list(range(coder.cfg.d_sae))
        if features is None
        else [features]
        if isinstance(features, int)
        else list(features)
    )
    for f in wanted:
        if not 0 <= int(f) < coder.cfg.d_sae:
            raise MechscopeError(
                f"feature {f} is out of range: this dictionary has {coder.cfg.d_sae} latents (0-{coder.cfg.d_sae - 1})"
            )
    return [int(f) for f in wanted]


def direction(coder: SparseCoder, feature: int) -> Float[Tensor, " d_out"]:
    """The unit decoder row of `feature`: `model.steer(site, direction(coder, f), scale)`."""
    return coder.direction(feature)


@torch.no_grad()
def _site_acts(model, coder: SparseCoder, site: str, inputs) -> tuple[Tensor, Tensor, Tensor | None]:
    run = model.run(inputs, record=[site], logits=False)
    x = run.cache[site]
    acts = coder.encode(x.reshape(*x.shape[:2], -1).to(coder.W_enc.device))
    return acts, run.tokens, run.mask


def feature_acts(model, coder: SparseCoder, prompts, *, site: str | None = None) -> Float[Tensor, "batch pos d_sae"]:
    """Latent activations at every position (zeros at padding)."""
    site = site_of(model, coder, site)
    acts, _, mask = _site_acts(model, coder, site, prompts)
    return acts if mask is None else acts * mask[..., None].to(acts)


@dataclass
class TopContexts(Saveable):
    """Per feature, its k strongest activations and the token windows around them."""

    KIND = "dictionary_top_contexts"

    features: list[int]
    values: Float[Tensor, "feature k"]
    """Activations, descending (0 where a feature fired fewer than k times)."""
    sequence: Int[Tensor, "feature k"]
    """Index of the sequence of each activation in the input (-1 where none)."""
    positions: Int[Tensor, "feature k"]
    windows: list[list[list[str]]] = field(default_factory=list)
    """[feature][j] -> the tokens from `context` before to `context` after the position."""
    centre: list[list[int]] = field(default_factory=list)
    """[feature][j] -> index of the activating token within its window."""

    def rows(self, feature: int | None = None) -> list[dict]:
        """One dict per context (of one feature, or all): feature, value, sequence, pos, tokens, centre."""
        chosen = self.features if feature is None else [feature]
        out = []
        for f in chosen:
            i = self.features.index(f)
            out += [
                {"feature": f, "value": float(v), "sequence": int(r), "pos": int(p), "tokens": w, "centre": c}
                for v, r, p, w, c in zip(
                    self.values[i], self.sequence[i], self.positions[i], self.windows[i], self.centre[i]
                )
                if int(r) >= 0
            ]
        return out

    def to_html(self) -> str:
        """A self-contained HTML fragment; the activating token is highlighted."""
        out = []
        for f in self.features:
            out.append(f"<h4>feature {f}</h4><table>")
            for r in self.rows(f):
                toks = [
                    html.escape(visible(t))
                    if j != r["centre"]
                    else f"<b style='background:#fdd'>{html.escape(visible(t))}</b>"
                    for j, t in enumerate(r["tokens"])
                ]
                out.append(f"<tr><td>{r['value']:.3f}</td><td><code>{''.join(toks)}</code></td></tr>")
            out.append("</table>")
        return "\n".join(out)


def _chunks(inputs, batch_size: int):
    n = len(inputs)
    for i in range(0, n, batch_size):
        yield i, inputs[i : i + batch_size]


def top_contexts(
    model,
    coder: SparseCoder,
    tokens: Tensor | Sequence[str],
    features: int | Sequence[int] | None = None,
    *,
    k: int = 10,
    context: int = 8,
    batch_size: int = 32,
    site: str | None = None,
) -> TopContexts:
    """The k strongest activations of each feature over a token tensor [batch, pos] or list of
    prompts, with windows of `context` tokens either side."""
    if k < 1 or context < 0:
        raise MechscopeError(f"k must be at least 1 and context 0 or more, got k={k}, context={context}")
    site = site_of(model, coder, site)
    wanted = torch.tensor(_features(coder, features))
    best_v = torch.zeros(len(wanted), 0)
    best_i = torch.zeros(len(wanted), 0, dtype=torch.long)
    all_tokens, all_masks, offset, width = [], [], 0, 0
    for start, chunk in tqdm(list(_chunks(tokens, batch_size)), desc="top contexts", disable=None, leave=False):
        acts, toks, mask = _site_acts(model, coder, site, chunk)
        acts = acts[..., wanted.to(acts.device)].float().cpu()  # [b, p, f]
        if mask is not None:
            acts = acts * mask[..., None].cpu()
        b, p = acts.shape[:2]
        flat = acts.reshape(b * p, -1).T  # [f, b*p]
        v, i = flat.topk(min(k, flat.shape[1]), dim=-1)
        rows, pos = i // p + offset, i % p
        best_v = torch.cat([best_v, v], 1)
        best_i = torch.cat([best_i, rows * 1_000_000 + pos], 1)
        keep = best_v.topk(min(k, best_v.shape[1]), dim=-1).indices
        best_v, best_i = best_v.gather(1, keep), best_i.gather(1, keep)
        all_tokens.append(toks.cpu())
        all_masks.append(torch.ones_like(toks) if mask is None else mask.cpu())
        offset, width = offset + b, max(width, p)
    toks = torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in all_tokens])
    masks = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in all_masks])
    rows, pos = best_i // 1_000_000, best_i % 1_000_000
    rows = torch.where(best_v > 0, rows, -1)
    result = TopContexts(wanted.tolist(), best_v, rows, pos)
    for fr, fp in zip(rows.tolist(), pos.tolist()):
        windows: list[list[str]] = []
        centres: list[int] = []
        for r, q in zip(fr, fp):
            if r < 0:
                windows.append([])
                centres.append(-1)
                continue
            lo, hi = max(0, q - context), min(int(masks[r].sum()), q + context + 1)
            windows.append([decode(model, t) for t in toks[r, lo:hi].tolist()])
            centres.append(q - lo)
        result.windows.append(windows)
        result.centre.append(centres)
    return result


@dataclass
class LogitEffect(Saveable):
    """Tokens whose logits a feature's decoder row raises (top) and lowers (bottom) directly."""

    KIND = "dictionary_logit_effect"

    feature: int
    top: list[tuple[str, float]]
    bottom: list[tuple[str, float]]
    logits: Float[Tensor, " vocab"] = field(repr=False)

    def __post_init__(self) -> None:
        self.top = [(str(t), float(v)) for t, v in self.top]
        self.bottom = [(str(t), float(v)) for t, v in self.bottom]

    def plot(self, ax=None):
        """Bars of the most promoted and most suppressed tokens."""
        items = self.bottom[::-1] + self.top[::-1]
        fig, ax = figure(5.0, 0.22 * len(items) + 1.0) if ax is None else (ax.figure, ax)
        ax.barh(
            [repr(t) for t, _ in items],
            [v for _, v in items],
            color=["#4c78a8" if v >= 0 else "#e45756" for _, v in items],
        )
        ax.axvline(0, color="black", linewidth=0.6)
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlabel(f"direct logit effect of feature {self.feature}'s decoder row")
        return fig


@torch.no_grad()
def logit_effect(model, coder: SparseCoder, feature: int, k: int = 10) -> LogitEffect:
    """The decoder row pushed through the final norm and the unembedding, as direct logit
    attribution does with the norm's scale frozen: centring (LayerNorm) and gain apply, the
    scale is left at 1 (it only rescales all logits alike), the bias is left out."""
    _features(coder, feature)
    if coder.cfg.out_dim != model.dims.d_model:
        raise MechscopeError(
            f"feature {feature} writes {coder.cfg.out_dim}-wide vectors, not the residual stream "
            f"(d_model={model.dims.d_model}): logit_effect needs a residual-width dictionary"
        )
    row = coder.W_dec[feature].detach().float().to(model.device)
    module = model.module(model.adapter.final_norm) if model.adapter.final_norm else None
    if module is not None:
        if isinstance(module, torch.nn.LayerNorm) or getattr(module, "bias", None) is not None:
            row = row - row.mean()
        weight = getattr(module, "weight", None)
        if weight is not None:
            row = row * (weight.float() + model.adapter.norm_gain_offset)
    logits = (row @ model.W_U.detach().float()).cpu()
    top, bottom = logits.topk(k), (-logits).topk(k)
    return LogitEffect(
        feature,
        [(decode(model, int(i)), float(v)) for v, i in zip(top.values, top.indices)],
        [(decode(model, int(i)), -float(v)) for v, i in zip(bottom.values, bottom.indices)],
        logits,
    )
