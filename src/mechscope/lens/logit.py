"""The logit lens (nostalgebraist 2020): read every layer's residual stream with the
model's own final norm and unembedding, as if the model stopped there.

    lens = ms.lens.logit_lens(model, "def add(a, b):\\n    return", targets=[" a"])
    lens.plot()                        # layer x position: top-1 token and its probability
    lens.target_probs[:, 0, -1, 0]     # p(" a") at the last position, per layer

Pass a tuned lens (or any `Translator`) as `translator=` to read the streams through it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..errors import MechscopeError
from ..plots import figure, visible
from ..results import Saveable, pandas
from ..tokens import absolute_positions, decode, decode_many, position_list, require_lm_head, token_ids
from . import _common as C

log = logging.getLogger(__name__)

CHUNK_LOGITS = 1 << 21
"""Logits held at once while unembedding (8 MiB of float32: big enough for an efficient GEMM,
small enough for the elementwise passes to stay in cache)."""


@dataclass
class LogitLens(Saveable):
    """What each residual stream predicts, per layer x prompt x position.

    Distributions are softmax(unembed(final_norm(stream))) over the whole vocabulary, or
    over `vocab_ids` when a subset was asked for (renormalised over the subset). The last
    layer's stream gives exactly the model's own output distribution.
    """

    KIND = "logit_lens"

    model_name: str
    layers: list[str]
    """Plot label per stream: 'embed' (blocks.0.hook_resid_pre), 'L{l} mid', 'L{l}' (resid_post)."""
    sites: list[str]
    tokens: Int[Tensor, "batch pos"]
    """Input token at each lens position."""
    positions: Int[Tensor, "batch pos"]
    """Absolute position of each lens column in its sequence."""
    mask: Bool[Tensor, "batch pos"]
    """False where a column is padding (prompts of different lengths, all positions)."""
    top_ids: Int[Tensor, "layer batch pos k"]
    top_probs: Float[Tensor, "layer batch pos k"]
    entropy: Float[Tensor, "layer batch pos"]
    """Entropy of each layer's distribution, in nats."""
    kl: Float[Tensor, "layer batch pos"]
    """KL(final || layer) in nats: the model's output distribution against this layer's."""
    targets: list[str] = field(default_factory=list)
    target_ids: Int[Tensor, " target"] | None = None
    target_probs: Float[Tensor, "layer batch pos target"] | None = None
    target_ranks: Int[Tensor, "layer batch pos target"] | None = None
    """0 for the most likely token."""
    vocab_ids: Int[Tensor, " vocab"] | None = None
    translator: str = "identity"
    token_strings: dict[int, str] = field(default_factory=dict)
    """Text of every token id that appears in `tokens` and `top_ids`."""

    def __post_init__(self) -> None:
        self.token_strings = {int(k): v for k, v in self.token_strings.items()}

    def text(self, token_id: int | Tensor) -> str:
        return self.token_strings.get(int(token_id), str(int(token_id)))

    def top_tokens(self, layer: int | str = -1, row: int = 0, pos: int = -1) -> list[tuple[str, float]]:
        """The k most likely tokens (text, probability) of one stream at one position."""
        i = self.layer_index(layer)
        return [(self.text(t), float(p)) for t, p in zip(self.top_ids[i, row, pos], self.top_probs[i, row, pos])]

    def layer_index(self, layer: int | str) -> int:
        """Row of a stream given its label ('L3') or its index in `layers` (negative from the end)."""
        if isinstance(layer, str):
            if layer not in self.layers:
                raise MechscopeError(f"no stream {layer!r} in this lens (streams: {', '.join(self.layers)})")
            return self.layers.index(layer)
        if not -len(self.layers) <= layer < len(self.layers):
            raise MechscopeError(
                f"layer index {layer} is out of range: this lens has {len(self.layers)} streams "
                f"({', '.join(self.layers)})"
            )
        return layer % len(self.layers)

    def plot(self, row: int = 0, ax=None, max_chars: int = 8):
        """The classic logit-lens picture for one prompt: streams (embedding at the bottom)
        by position, coloured by the top-1 probability and labelled with the top-1 token."""
        keep = self.mask[row].nonzero().flatten().tolist()
        probs = self.top_probs[:, row, keep, 0].float().numpy()
        fig, ax = (
            figure(max(5.0, 0.75 * len(keep) + 2), max(2.5, 0.32 * len(self.layers) + 1.2))
            if ax is None
            else (ax.figure, ax)
        )
        image = ax.imshow(probs, aspect="auto", origin="lower", cmap="Blues", vmin=0, vmax=1)
        for li in range(len(self.layers)):
            for col, pos in enumerate(keep):
                word = self.text(self.top_ids[li, row, pos, 0])[:max_chars]
                ax.text(
                    col,
                    li,
                    visible(word),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if probs[li, col] > 0.6 else "black",
                )
        ax.set_yticks(range(len(self.layers)), self.layers, fontsize=8)
        ax.set_xticks(
            range(len(keep)),
            [visible(self.text(self.tokens[row, p]), max_chars) for p in keep],
            rotation=60,
            ha="right",
            fontsize=8,
        )
        ax.set_xlabel("input token")
        ax.set_ylabel("residual stream read")
        ax.set_title(
            f"{'logit' if self.translator == 'identity' else self.translator} lens: {self.model_name}", fontsize=9
        )
        ax.figure.colorbar(image, ax=ax, label="top-1 probability")
        return fig

    def to_frame(self):
        """One row per (layer, prompt, position): top-1 token, its probability, entropy, KL,
        and the probability and rank of each target."""
        pd = pandas()
        rows = []
        for li, label in enumerate(self.layers):
            for b, p in self.mask.nonzero().tolist():
                row = {
                    "layer": label,
                    "batch": b,
                    "pos": int(self.positions[b, p]),
                    "token": self.text(self.tokens[b, p]),
                    "top1": self.text(self.top_ids[li, b, p, 0]),
                    "p_top1": float(self.top_probs[li, b, p, 0]),
                    "entropy": float(self.entropy[li, b, p]),
                    "kl": float(self.kl[li, b, p]),
                }
                for ti, target in enumerate(self.targets):
                    assert self.target_probs is not None and self.target_ranks is not None  # there are targets
                    row[f"p[{target}]"] = float(self.target_probs[li, b, p, ti])
                    row[f"rank[{target}]"] = int(self.target_ranks[li, b, p, ti])
                rows.append(row)
        return pd.DataFrame(rows)


def logit_lens(
    model,
    prompts,
    *,
    positions: int | Sequence[int] | None = None,
    vocab: Sequence[str | int] | None = None,
    targets: Sequence[str | int] | str | int | None = None,
    k: int = 10,
    include_mid: bool = True,
    layers: Sequence[int] | int | None = None,
    translator: C.Translator | None = None,
    batch_size: int | None = None,
) -> LogitLens:
    """The logit lens of `prompts` (text, a list of texts, or token ids).

    positions: only these positions of each prompt (negative from its end); None = all.
    vocab: restrict every distribution to these tokens (strings of one token, or ids),
    renormalised over them; top-k, entropy, KL and ranks are then within the subset.
    targets: tokens (one token each) whose probability and rank are reported.
    include_mid: also read hook_resid_mid (sequential blocks; not with a translator).
    layers: only these blocks (the embedding stream is then left out); None = all.
    translator: `translator(resid, index) -> resid` applied before the final norm (a tuned
    lens); None reads the streams as they are. batch_size: prompts per forward pass.

    Cost: one forward (without its unembedding) plus one full-vocabulary unembedding per
    stream and position, which exactness requires; everything else is a few passes over those
    logits (bench/lens.py measures it). Full distributions are never kept: pass `positions`,
    `layers` or `include_mid=False` to read fewer streams.
    """
    require_lm_head(model, "the logit lens")
    if k < 1:
        raise MechscopeError(f"k must be at least 1, got {k}")
    wanted = position_list(positions)
    chosen = C.streams(model, include_mid=include_mid, layers=layers, with_translator=translator is not None)
    vocab_ids = torch.tensor(token_ids(model, vocab, "vocab token")) if vocab is not None else None
    target_ids = token_ids(model, targets, "target") if targets is not None else []
    if vocab_ids is not None:
        outside = [t for t in target_ids if t not in set(vocab_ids.tolist())]
        if outside:
            raise MechscopeError(
                f"targets {[decode(model, t) for t in outside]} are not in the vocab subset: add them to vocab"
            )
    last = f"blocks.{model.dims.n_layers - 1}.hook_resid_post"
    run = C.record(model, prompts, [s.site for s in chosen] + [last], wanted, batch_size)
    absolute, mask = absolute_positions(run, wanted)
    resids = [C.translated(model, run, s, translator) for s in chosen]
    reuse = translator is None and chosen[-1].site == last  # the last stream is the model's own output
    size = model.dims.d_vocab if vocab_ids is None else len(vocab_ids)
    stats = stream_statistics(model, resids, None if reuse else run.cache[last], vocab_ids, target_ids, min(k, size))
    tokens = run.tokens.cpu().gather(1, absolute.clamp(max=run.tokens.shape[1] - 1))
    seen = torch.cat([tokens[mask], stats["top_ids"].flatten(), torch.tensor(target_ids, dtype=torch.long)])
    return LogitLens(
        model_name=model.name,
        layers=[s.label for s in chosen],
        sites=[s.site for s in chosen],
        tokens=tokens,
        positions=absolute,
        mask=mask,
        targets=[decode(model, t) for t in target_ids],
        target_ids=torch.tensor(target_ids, dtype=torch.long) if target_ids else None,
        vocab_ids=vocab_ids,
        translator="identity" if translator is None else type(translator).__name__,
        token_strings=decode_many(model, seen.unique().tolist()),
        **stats,
    )


def stream_statistics(
    model, resids: list[Tensor], final: Tensor | None, vocab_ids: Tensor | None, target_ids: list[int], k: int
) -> dict[str, Any]:
    """Top-k, entropy, KL to the final distribution and target probabilities / ranks of
    every stream [batch, pos, d_model] in `resids`. `final` is the last block's output when
    it is not `resids[-1]` itself (a translator, or a subset of layers).

    Tokens go through in chunks; within a chunk all streams are stacked [token, stream,
    d_model] and pushed through the final norm + unembedding in one GEMM, and every
    statistic comes from those logits with one exp pass (see `_chunk_statistics`)."""
    batch, pos, d_model = resids[0].shape
    flat = [r.reshape(-1, d_model) for r in resids] + ([] if final is None else [final.reshape(-1, d_model)])
    n, width, tokens = len(resids), len(flat), batch * pos
    size = model.dims.d_vocab if vocab_ids is None else len(vocab_ids)
    step = max(1, CHUNK_LOGITS // (width * size))
    columns = None
    if target_ids:
        columns = (
            torch.tensor(target_ids)
            if vocab_ids is None
            else torch.tensor([vocab_ids.tolist().index(t) for t in target_ids])
        )
    t = len(target_ids)
    out: dict[str, Any] = {
        "top_ids": torch.empty(tokens, n, k, dtype=torch.long),
        "top_probs": torch.empty(tokens, n, k),
        "entropy": torch.empty(tokens, n),
        "kl": torch.empty(tokens, n),
        "target_probs": torch.empty(tokens, n, t) if t else None,
        "target_ranks": torch.empty(tokens, n, t, dtype=torch.long) if t else None,
    }
    buffer = None
    with torch.no_grad():
        for start in range(0, tokens, step):
            rows = torch.stack([f[start : start + step] for f in flat], dim=1).to(model.device)
            logits = model.to_logits(rows).float()  # [token, stream, vocab]
            if vocab_ids is not None:
                logits = logits[..., vocab_ids.to(logits.device)]
            if buffer is None or buffer.device != logits.device:
                buffer = torch.empty((step, *logits.shape[1:]), device=logits.device)
            chunk = _chunk_statistics(logits, buffer[: len(logits)], k, columns)
            for name, value in chunk.items():
                if value is not None:
                    out[name][start : start + len(logits)] = value[:, :n].cpu()
    if vocab_ids is not None:
        out["top_ids"] = vocab_ids[out["top_ids"]]
    return {
        name: None if v is None else v.reshape(batch, pos, n, *v.shape[2:]).movedim(2, 0).contiguous()
        for name, v in out.items()
    }


def _chunk_statistics(
    logits: Float[Tensor, "token stream vocab"],
    buffer: Float[Tensor, "token stream vocab"],
    k: int,
    columns: Tensor | None,
) -> dict[str, Tensor | None]:
    """Statistics of every row of `logits` (overwritten); the last stream is the model's output.

    With x = logits - max (in place), e = exp(x) (into `buffer`), s = sum(e), lse = log(s):
    log p = x - lse, entropy = lse - sum(e x) / s, and KL(final || stream) =
    sum(pf log pf) - sum(pf log p) where sum(pf log p) = pf . x - lse (sum pf = 1). The final
    stream's own KL is then exactly 0: both terms are the same computation."""
    top = topk(logits, k)  # sorted: top.values[..., :1] is each row's max
    shift = top.values[..., :1]
    chosen = ranks = None
    if columns is not None:
        chosen = logits[..., columns.to(logits.device)]
        ranks = torch.stack([(logits > chosen[..., i, None]).sum(-1) for i in range(chosen.shape[-1])], dim=-1)
    x = logits.sub_(shift)
    e = torch.exp(x, out=buffer)
    s = e.sum(-1)
    lse = s.log()
    pf = e[:, -1] / s[:, -1, None]  # [token, vocab]: the model's own output distribution
    e_x = e.mul_(x).sum(-1)  # products go into `buffer`: no fresh chunk-sized tensors
    if e_x.isnan().any():  # 0 * -inf where a logit is -inf: that term is 0
        e_x = e.nansum(-1)
    pf_x = torch.mul(x, pf[:, None], out=buffer).sum(-1)  # [token, stream]
    if pf_x.isnan().any():
        pf_x = buffer.nansum(-1)
    log_pf = pf_x - lse
    lse = lse[..., None]
    return {
        "top_ids": top.indices,
        "top_probs": (top.values - shift - lse).exp_(),
        "entropy": lse[..., 0] - e_x / s,
        "kl": (log_pf[:, -1:] - log_pf).clamp_(min=0),
        "target_probs": None if chosen is None else (chosen - shift - lse).exp_(),
        "target_ranks": ranks,
    }


TOPK_BLOCK = 64


def topk(x: Float[Tensor, "... vocab"], k: int) -> torch.return_types.topk:
    """`x.topk(k, dim=-1)` (sorted, same values; among equal values the ids may differ),
    in two levels: the k largest values lie in the k blocks of `TOPK_BLOCK` columns with
    the largest maxima (each of them beats a block maximum that is not among those k).
    A row-wise block max is a fast vectorised pass and torch's top-k costs per element, so
    on wide vocabularies this is about twice as fast as one top-k over each whole row."""
    width = x.shape[-1]
    blocks = width // TOPK_BLOCK
    if blocks < 4 * k:
        return x.topk(k, dim=-1)
    rows = x.reshape(-1, width)
    body = rows[:, : blocks * TOPK_BLOCK].unflatten(-1, (blocks, TOPK_BLOCK))  # [row, block, TOPK_BLOCK]
    best = body.amax(-1).topk(k, dim=-1).indices  # [row, k]
    flat = (best + blocks * torch.arange(len(rows), device=x.device)[:, None]).flatten()
    picked = body.reshape(-1, TOPK_BLOCK).index_select(0, flat).view(len(rows), k * TOPK_BLOCK)
    ids = (best[..., None] * TOPK_BLOCK + torch.arange(TOPK_BLOCK, device=x.device)).flatten(1)
    if width % TOPK_BLOCK:
        tail = torch.arange(blocks * TOPK_BLOCK, width, device=x.device)
        picked = torch.cat([picked, rows[:, tail]], dim=-1)
        ids = torch.cat([ids, tail.expand(len(rows), -1)], dim=-1)
    top = picked.topk(k, dim=-1)
    shape = (*x.shape[:-1], k)
    return torch.return_types.topk((top.values.view(shape), ids.gather(-1, top.indices).view(shape)))
