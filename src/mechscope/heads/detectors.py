"""Attention-head detectors: score every head of a model at once from its recorded
attention patterns (``blocks.{l}.attn.hook_pattern``, [batch, head, q_pos, k_pos]).

The scores follow TransformerLens and Olsson et al. 2022 ("In-context learning and
induction heads"). Each is the mean, over sequences and over the query positions it
names, of the attention one query position pays to one key position:

- previous-token score: attention from position i to i - 1 (every query but the first);
- duplicate-token score: on a random span of n tokens repeated twice, attention from a
  token of the second copy to the same token in the first copy (offset -n);
- induction score: on the same sequences, attention from a token of the second copy to
  the token right after its earlier occurrence (offset -(n - 1)).

A head that does the job perfectly scores 1; uniform causal attention scores about
1 / (mean number of visible keys). Build the repeated sequences with
`repeated_random_tokens`; the span n is read off the tokens (or given as ``span``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..data import repeated_random_tokens  # noqa: F401  (re-exported: the detectors' stimulus)
from ..errors import MechscopeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadScores:
    """One score per attention head, from one detector."""

    scores: Float[Tensor, "layer head"]
    """The score of head ``h`` in layer ``l`` is ``scores[l, h]`` (0..1 for attention mass)."""
    kind: str
    """Which detector made them: ``previous_token``, ``duplicate_token`` or ``induction``."""

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The ``k`` best heads as ``(layer, head, score)``, highest score first."""
        if k < 0:
            raise MechscopeError(f"k must be 0 or more (how many heads to list), got {k}")
        flat = self.scores.flatten()
        values, index = flat.topk(min(k, flat.numel()))
        n_heads = self.scores.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(values, index)]

    def plot(self, title: str | None = None):
        """A layer x head heatmap of the scores (colour scale 0..1), values written in."""
        n_layers, n_heads = self.scores.shape
        from matplotlib.figure import Figure

        fig = Figure(figsize=(1.2 + 0.55 * n_heads, 1.0 + 0.5 * n_layers), layout="constrained")
        ax = fig.subplots()
        image = ax.imshow(self.scores.float().cpu().numpy(), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        for (layer, head), value in zip(
            torch.cartesian_prod(torch.arange(n_layers), torch.arange(n_heads)).tolist(), self.scores.flatten().tolist()
        ):
            ax.text(
                head,
                layer,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value > 0.6 else "black",
            )
        ax.set(
            xlabel="head",
            ylabel="layer",
            xticks=range(n_heads),
            yticks=range(n_layers),
            title=title or f"{self.kind.replace('_', '-')} score",
        )
        fig.colorbar(image, ax=ax, shrink=0.8, label="score (0-1)")
        return fig


def require_heads(model, method: str) -> None:
    """A model without attention heads (a plain torch module) fails here, in one line."""
    if getattr(model, "dims", None) is None:
        raise MechscopeError(
            f"{getattr(model, 'name', model)} has no attention heads: {method} need a transformer "
            "(e.g. zoo:induction or zoo:pycode)"
        )


def repeated_tokens_for(model, span: int = 20, batch: int = 16, seed: int = 0) -> Int[Tensor, "batch pos"]:
    """`repeated_random_tokens` over `model`'s vocabulary, after its tokenizer's BOS token (if any):
    the stimulus of the duplicate-token and induction scores."""
    require_heads(model, "head scores")
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    return repeated_random_tokens(model.dims.d_vocab, span, batch, seed, prefix_token=bos)


def record_patterns(
    model, prompts, attention_mask: Tensor | None = None
) -> tuple[Float[Tensor, "layer batch head q_pos k_pos"], Bool[Tensor, "batch pos"]]:
    """Every layer's attention pattern for ``prompts`` (text or token ids, right-padded
    with ``attention_mask``), and which positions are real tokens (False for padding)."""
    require_heads(model, "attention patterns")
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.dims.n_layers)]
    run = model.run(prompts, record=names, logits=False, attention_mask=attention_mask)
    patterns = torch.stack([run.cache[name].float().cpu() for name in names])
    return patterns, run.mask.bool().cpu()


def stripe_scores(
    patterns: Float[Tensor, "layer batch head q_pos k_pos"], offset: int, queries: Bool[Tensor, "batch q_pos"]
) -> Float[Tensor, "layer head"]:
    """Mean attention from query q to key q + offset (offset <= 0), over the query
    positions marked True in ``queries`` (and over sequences)."""
    if offset > 0:
        raise MechscopeError(f"causal attention has no keys after the query: offset must be <= 0, got {offset}")
    # diagonal(offset=-m)[..., j] is pattern[q=j+m, k=j]: queries m .. n_pos-1
    stripe = patterns.diagonal(offset=offset, dim1=-2, dim2=-1)  # [layer, batch, head, n_pos - m]
    weight = queries[:, -offset:].float()
    if weight.sum() == 0:
        raise MechscopeError(f"no query position has a key at offset {offset}: the sequences are too short")
    return (stripe * weight[None, :, None, :]).sum((1, 3)) / weight.sum()


def previous_token_scores(model, tokens, attention_mask: Tensor | None = None) -> HeadScores:
    """Mean attention from each token to the token just before it, for every head.

    ``tokens``: text, or token ids [batch, pos] (right-padded: give ``attention_mask``).
    Every real query position but the first of each sequence counts.
    """
    patterns, real = record_patterns(model, tokens, attention_mask)
    queries = real & torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], dim=1)
    return HeadScores(stripe_scores(patterns, -1, queries), "previous_token")


def repeat_span(tokens: Int[Tensor, "batch pos"]) -> int:
    """The largest n such that every row ends in two identical copies of n tokens."""
    length = tokens.shape[-1]
    for n in range(length // 2, 0, -1):
        if torch.equal(tokens[:, length - 2 * n : length - n], tokens[:, length - n :]):
            return n
    raise MechscopeError(
        "the tokens do not end in a span repeated twice: build them with repeated_random_tokens(...) or pass span="
    )


def _second_copy_scores(model, tokens: Tensor, span: int | None, offset_from_span: int, kind: str) -> HeadScores:
    if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.int32, torch.int64):
        raise MechscopeError(
            f"{kind} scores need token ids (a LongTensor [batch, pos]) of a repeated sequence, "
            "e.g. from repeated_random_tokens(...)"
        )
    tokens = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
    n = span or repeat_span(tokens)
    if not 1 <= n <= tokens.shape[1] // 2:
        raise MechscopeError(f"span must be between 1 and {tokens.shape[1] // 2} for {tokens.shape[1]} tokens, got {n}")
    patterns, _ = record_patterns(model, tokens)
    queries = torch.zeros(tokens.shape, dtype=torch.bool)
    queries[:, tokens.shape[1] - n :] = True  # the second copy
    return HeadScores(stripe_scores(patterns, offset_from_span - n, queries), kind)


def induction_scores(model, tokens: Int[Tensor, "batch pos"], span: int | None = None) -> HeadScores:
    """Mean attention from each token of the second copy to the token right after its
    earlier occurrence (key offset -(n - 1) for span n), for every head."""
    return _second_copy_scores(model, tokens, span, 1, "induction")


def duplicate_token_scores(model, tokens: Int[Tensor, "batch pos"], span: int | None = None) -> HeadScores:
    """Mean attention from each token of the second copy to its earlier occurrence
    (key offset -n for span n), for every head."""
    return _second_copy_scores(model, tokens, span, 0, "duplicate_token")
