"""Model diffing with a crosscoder (Lindsey et al. 2024): one dictionary over the same site
of two models A and B (a base and its fine-tune, two training checkpoints) run on the same
tokens; a latent's decoder splits into d_A and d_B, and their norms say which model uses it.

    stream = diff_source(model_a, model_b, site, data.train, labels=("base", "chat"))
    coder = fit_and_save(Trainer(stream, [crosscoder_config(stream, 4096)], cfg), out)[0]
    result = diff(coder, density=density(coder, stacked_activations(pairs, tokens)))
    result.counts(); result.plot(); exclusive_contexts(coder, pairs, tokens, result.latents("b_only"))

Measure: the relative decoder norm r = |d_B| / (|d_A| + |d_B|) in [0, 1], norms taken in
the normalised space the crosscoder was trained in (each model's activations scaled to mean
norm sqrt(d)): 0 = only A writes the latent, 1 = only B, 1/2 = both equally. A normalised
difference such as (|d_B| - |d_A|) / max(|d_A|, |d_B|) in [-1, 1] is another common summary;
it is an increasing function of r, so thresholds on one translate one to one to the other.
r is reported here (its three peaks sit at 0, 1/2 and 1).

Classes: "a_only" when r <= threshold, "b_only" when r >= 1 - threshold, "shared" otherwise,
and "dead" when a latent never fires on the data given (or has no decoder norm at all);
threshold 0.1 by default. For shared latents `cosine` is the cosine between d_A and d_B:
near 1 means the two models use the same direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import MechscopeError
from ..plots import figure
from ..results import Saveable, pandas
from ..tokens import decode
from .crosscoder import Crosscoder
from .features import TopContexts
from .source import SourceConfig, keep_mask

if TYPE_CHECKING:
    from ..hooked_model import HookedModel

KINDS = ("shared", "a_only", "b_only", "dead")


@dataclass
class ModelDiff(Saveable):
    """Per latent: decoder norms in A and B, relative norm, decoder cosine, class."""

    KIND = "crosscoder_model_diff"

    labels: list[str]
    """Names of model A and model B (the crosscoder's two blocks)."""
    threshold: float
    norms: Float[Tensor, "d_sae 2"]
    """|d_A|, |d_B| in the normalised space."""
    relative: Float[Tensor, " d_sae"]
    """r = |d_B| / (|d_A| + |d_B|); 0.5 where both are 0."""
    cosine: Float[Tensor, " d_sae"]
    kind: Int[Tensor, " d_sae"]
    """Index into KINDS: 0 shared, 1 a_only, 2 b_only, 3 dead."""
    density: Float[Tensor, " d_sae"] | None = None
    """Firing frequency per latent on the data the diff was measured on (None: not measured)."""

    def latents(self, kind: str) -> list[int]:
        """Latents of one class, most exclusive (or, for shared, most balanced) first."""
        if kind not in KINDS:
            raise MechscopeError(f"unknown latent class {kind!r}: choose one of {', '.join(KINDS)}")
        idx = torch.nonzero(self.kind == KINDS.index(kind)).flatten()
        key = {
            "a_only": self.relative[idx],
            "b_only": -self.relative[idx],
            "shared": (self.relative[idx] - 0.5).abs(),
        }.get(kind, idx.float())
        return idx[key.argsort(stable=True)].tolist()

    def counts(self) -> dict[str, int]:
        return {k: int((self.kind == i).sum()) for i, k in enumerate(KINDS)}

    def to_dict(self) -> dict:
        """Counts, labels and threshold (JSON-ready)."""
        alive = self.kind != KINDS.index("dead")
        shared = self.kind == 0
        return {
            "labels": list(self.labels),
            "threshold": self.threshold,
            "d_sae": len(self.kind),
            "counts": self.counts(),
            "a_only": self.latents("a_only"),
            "b_only": self.latents("b_only"),
            "mean_relative_alive": float(self.relative[alive].mean()) if alive.any() else None,
            "median_cosine_shared": float(self.cosine[shared].median()) if shared.any() else None,
        }

    def to_frame(self):
        pd = pandas()
        return pd.DataFrame(
            {
                "norm_a": self.norms[:, 0].numpy(),
                "norm_b": self.norms[:, 1].numpy(),
                "relative": self.relative.numpy(),
                "cosine": self.cosine.numpy(),
                "kind": [KINDS[int(k)] for k in self.kind],
                **({} if self.density is None else {"density": self.density.numpy()}),
            }
        )

    def plot(self, ax=None, bins: int = 50):
        """The paper's histogram: latents by relative decoder norm (dead latents left out),
        exclusive zones shaded."""
        fig, ax = figure(6.0, 3.0) if ax is None else (ax.figure, ax)
        alive = self.kind != KINDS.index("dead")
        ax.hist(self.relative[alive].numpy(), bins=bins, range=(0, 1), color="#4c78a8")
        for lo, hi in ((0, self.threshold), (1 - self.threshold, 1)):
            ax.axvspan(lo, hi, color="#e45756", alpha=0.12, linewidth=0)
        c = self.counts()
        a, b = self.labels
        ax.set_xlabel(f"relative decoder norm |d_B| / (|d_A| + |d_B|)   (A = {a}, B = {b})")
        ax.set_ylabel("latents")
        ax.set_title(
            f"{c['a_only']} only in A, {c['shared']} shared, {c['b_only']} only in B ({c['dead']} dead)", fontsize=9
        )
        return fig


def _pair(coder: Crosscoder, a: int | str, b: int | str) -> tuple[Tensor, Tensor]:
    if not isinstance(coder, Crosscoder):
        raise MechscopeError(f"model diffing needs a crosscoder, got a {coder.cfg.arch} dictionary")
    da, db = coder.block_index(a), coder.block_index(b)
    d = coder.d_block
    W = coder.W_dec.detach().float().cpu()
    scale = coder.folded_scale.float().cpu()
    return W[:, da * d : (da + 1) * d] * scale[da], W[:, db * d : (db + 1) * d] * scale[db]


def relative_norms(coder: Crosscoder, a: int | str = 0, b: int | str = 1) -> Float[Tensor, " d_sae"]:
    """r = |d_B| / (|d_A| + |d_B|) per latent, in the normalised space (0.5 where both are 0)."""
    dA, dB = _pair(coder, a, b)
    na, nb = dA.norm(dim=-1), dB.norm(dim=-1)
    total = na + nb
    return torch.where(total > 0, nb / total.clamp_min(1e-30), torch.full_like(total, 0.5))


def diff(
    coder: Crosscoder,
    a: int | str = 0,
    b: int | str = 1,
    *,
    threshold: float = 0.1,
    density: Float[Tensor, " d_sae"] | None = None,
    labels: Sequence[str] | None = None,
) -> ModelDiff:
    """Relative norms, cosines and classes of every latent (see the module docstring)."""
    if not 0 <= threshold < 0.5:
        raise MechscopeError(f"threshold must be in [0, 0.5), got {threshold}")
    dA, dB = _pair(coder, a, b)
    norms = torch.stack([dA.norm(dim=-1), dB.norm(dim=-1)], dim=1)
    relative = relative_norms(coder, a, b)
    cosine = torch.nn.functional.cosine_similarity(dA, dB, dim=-1, eps=1e-12)
    kind = torch.zeros(coder.cfg.d_sae, dtype=torch.long)
    kind[relative <= threshold] = KINDS.index("a_only")
    kind[relative >= 1 - threshold] = KINDS.index("b_only")
    dead = norms.sum(-1) <= 1e-8 * norms.sum(-1).max().clamp_min(1e-30)
    if density is not None:
        dead |= density.cpu() == 0
    kind[dead] = KINDS.index("dead")
    if labels is None:
        names = [coder.cfg.blocks[coder.block_index(x)] for x in (a, b)]
        labels = [n.rsplit(":", 1)[0] if ":" in n else n for n in names]
    return ModelDiff(
        list(labels), threshold, norms, relative, cosine, kind, None if density is None else density.float().cpu()
    )


# Activations of the models on token contexts, stacked as the crosscoder reads them


@torch.no_grad()
def stacked_activations(
    members: Sequence[tuple[HookedModel, str]], tokens: Int[Tensor, "n ctx"], *, batch_size: int = 64
) -> Float[Tensor, "n ctx d_in"]:
    """[x_1 | ... | x_n] at every position: site `members[i][1]` of model `members[i][0]`."""
    out = []
    for i in range(0, len(tokens), batch_size):
        chunk, parts = tokens[i : i + batch_size], []
        for model, site in members:
            run = model.run(chunk, record=[site], logits=False)
            parts.append(run.cache[site].flatten(2).float().cpu())
        out.append(torch.cat(parts, -1))
    return torch.cat(out)


@torch.no_grad()
def density(
    coder: Crosscoder, acts_in: Float[Tensor, "n ctx d_in"], keep: Tensor | None = None, batch_size: int = 4096
) -> Float[Tensor, " d_sae"]:
    """Firing frequency of each latent over the (kept) positions of stacked activations."""
    x = acts_in[keep] if keep is not None else acts_in.reshape(-1, acts_in.shape[-1])
    fired = torch.zeros(coder.cfg.d_sae)
    for i in range(0, len(x), batch_size):
        fired += (coder.encode(x[i : i + batch_size].to(coder.W_enc.device)) > 0).sum(0).float().cpu()
    return fired / max(len(x), 1)


@torch.no_grad()
def exclusive_contexts(
    coder: Crosscoder,
    members: Sequence[tuple[HookedModel, str]],
    tokens: Int[Tensor, "n ctx"],
    features: Sequence[int],
    *,
    k: int = 10,
    context: int = 8,
    source: SourceConfig = SourceConfig(exclude_first=False),
    acts_in: Tensor | None = None,
) -> TopContexts:
    """The k strongest activations of `features` over `tokens` (positions kept by `source`),
    with token windows; `acts_in` reuses activations from `stacked_activations`."""
    if k < 1 or context < 0:
        raise MechscopeError(f"k must be at least 1 and context 0 or more, got k={k}, context={context}")
    if not features:
        return TopContexts(
            [], torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k, dtype=torch.long)
        )
    x = stacked_activations(members, tokens) if acts_in is None else acts_in
    n, ctx = tokens.shape
    keep = keep_mask(tokens, source)
    wanted = torch.tensor(list(features))
    flat_x, device = x.reshape(n * ctx, -1), coder.W_enc.device
    acts = torch.cat(
        [
            coder.encode(flat_x[i : i + 4096].to(device))[:, wanted.to(device)].float().cpu()
            for i in range(0, len(flat_x), 4096)
        ]
    )  # [n * ctx, features], a chunk at a time
    acts = acts * keep.reshape(-1, 1)
    values, flat = acts.T.topk(min(k, n * ctx), dim=-1)
    rows = torch.where(values > 0, flat // ctx, -1)
    pos = flat % ctx
    result = TopContexts(wanted.tolist(), values, rows, pos)
    model = members[0][0]
    for fr, fp in zip(rows.tolist(), pos.tolist()):
        windows: list[list[str]] = []
        centres: list[int] = []
        for r, q in zip(fr, fp):
            if r < 0:
                windows.append([])
                centres.append(-1)
                continue
            lo, hi = max(0, q - context), min(ctx, q + context + 1)
            windows.append([decode(model, t) for t in tokens[r, lo:hi].tolist()])
            centres.append(q - lo)
        result.windows.append(windows)
        result.centre.append(centres)
    return result
