"""Which layer, which strength: `search` sweeps layer x strength and scores every cell.

Behaviour (default): on held-out pairs, the shift of log p(positive completion) -
log p(negative completion) that steering causes, averaged over pairs; the
anti-steerable fraction is the share of pairs moved the opposite way to the strength's
sign (Tan et al. 2024). With `behaviour=fn(text) -> float` and `prompts`, the shift of
fn over steered greedy continuations instead. Fluency cost: mean KL(unsteered ||
steered) of next-token distributions at the pairs' shared prefix (or, for generated
text, the rise of the continuation's per-token NLL under the unsteered model).

Batched: all strengths of one layer ride one forward — copies of the held-out rows join
at that layer's block (`copies=`), each copy with its own per-row strength — so the
blocks before it run once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from ..errors import MechscopeError
from .apply import vector_edits
from .contrast import contrast
from .heldout import Heldout
from .pairs import Pair, read_pairs
from .search_result import SearchResult
from .vector import SteeringVector, check_strength, layer_of

log = logging.getLogger(__name__)

DEFAULT_STRENGTHS = (-8.0, -4.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0, 8.0)
LOGIT_BUDGET = 1 << 26
"""Floats of logits per forward (256 MiB in float32); more strengths split into chunks."""


def _vector_and_heldout(model, source, heldout, layers, site, holdout, read, method, progress):
    if isinstance(source, SteeringVector):
        if heldout is None:
            raise MechscopeError("searching a ready vector needs held-out pairs to score it: pass heldout=")
        return source, read_pairs(heldout, what="held-out pairs")
    pairs = read_pairs(source)
    if heldout is not None:
        train, test = pairs, read_pairs(heldout, what="held-out pairs")
    else:
        cut = len(pairs) - max(1, round(len(pairs) * holdout))
        if cut < 1:
            raise MechscopeError(f"{len(pairs)} pair(s) cannot be split into fitting and held-out: give more")
        train, test = pairs[:cut], pairs[cut:]
    chosen = range(model.dims.n_layers) if layers is None else layers
    sites = [site.format(layer=layer) for layer in chosen]
    return contrast(model, train, sites, read=read, method=method, progress=progress), test


def _site_per_layer(vector: SteeringVector, layers: Sequence[int] | None) -> dict[int, str]:
    by_layer: dict[int, str] = {}
    for s in vector.sites:
        layer = layer_of(s)
        if layer is not None:
            by_layer[layer] = s
    wanted = sorted(by_layer) if layers is None else list(layers)
    missing = [layer for layer in wanted if layer not in by_layer]
    if missing or not wanted:
        raise MechscopeError(f"the vector has no direction at layer(s) {missing or wanted}; it has {vector.sites}")
    return {layer: by_layer[layer] for layer in wanted}


def _chunks(n: int, per: int) -> Iterable[slice]:
    return (slice(i, min(n, i + per)) for i in range(0, n, per))


def _join(model, site: str, layer: int) -> tuple[int, str]:
    """Where the strength copies join and the site they are steered at: a block's output is
    the next block's input, so copies of blocks.L.hook_resid_post join at block L + 1 and
    block L runs once (the last block's output: copies join at block L itself)."""
    if site == f"blocks.{layer}.hook_resid_post" and layer + 1 < model.dims.n_layers:
        return layer + 1, f"blocks.{layer + 1}.hook_resid_pre"
    return layer, site


@torch.no_grad()
def _pairs_layer(model, batch: Heldout, vector, site, layer, strengths: Tensor, base, per_forward):
    """(behaviour shift [S], KL [S], anti-steerable [S]) of one layer."""
    base_logp, base_pref = base
    shifts, kls = [], []
    rows = len(batch.ids)
    join, at = _join(model, site, layer)
    for part in _chunks(len(strengths), per_forward):
        chunk = strengths[part]
        if per_forward == 1:  # the unbatched baseline: a plain steered forward, no copies
            edits, copies = vector_edits(vector.only(site), float(chunk[0])), None
        else:
            edits = vector_edits(SteeringVector({at: vector.directions[site]}), chunk.repeat_interleave(rows))
            copies = {join: len(chunk)}
        logp = batch.log_probs(model.run(batch.ids, attention_mask=batch.mask, edits=edits, copies=copies).logits)
        shifts.append(batch.preference(batch.scores(logp)) - base_pref)
        kls.append(batch.kl(base_logp, logp))
    shift, kl = torch.cat(shifts), torch.cat(kls)  # [S, pairs], [S]
    anti = ((shift * strengths.sign()[:, None].to(shift)) < 0).float().mean(1)
    anti[strengths == 0] = float("nan")
    return shift.mean(1), kl, anti


@torch.no_grad()
def _text_layer(model, prompts, behaviour, vector, site, strengths: Tensor, base, max_new_tokens):
    """Generated-text behaviour: fn over greedy continuations, all strengths in one batch."""
    from .apply import generate

    base_score, base_nll = base
    n = len(prompts)
    edits_for = (vector.only(site), strengths.repeat_interleave(n))
    texts = generate(model, list(prompts) * len(strengths), edits_for, max_new_tokens=max_new_tokens)
    score = torch.tensor([float(behaviour(t[len(p) :])) for t, p in zip(texts, list(prompts) * len(strengths))])
    shift = score.view(len(strengths), n) - base_score
    nll = _nll(model, texts).view(len(strengths), n).mean(1) - base_nll
    anti = ((shift * strengths.sign()[:, None]) < 0).float().mean(1)
    anti[strengths == 0] = float("nan")
    return shift.mean(1), nll, anti


def _nll(model, texts: list[str]) -> Tensor:
    """Mean next-token NLL of each text under the unsteered model."""
    run = model.run(texts)
    logp = run.logits[:, :-1].float().log_softmax(-1).gather(-1, run.tokens[:, 1:, None].to(run.logits.device))
    mask = run.mask[:, 1:].to(logp)
    return -(logp[..., 0] * mask).sum(1).cpu() / mask.sum(1).clamp_min(1).cpu()


def search(
    model,
    vector_or_pairs: SteeringVector | str | Iterable[Pair],
    behaviour: Callable[[str], float] | None = None,
    *,
    layers: Sequence[int] | None = None,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    heldout: str | Iterable[Pair] | None = None,
    prompts: Sequence[str] | None = None,
    normalize: str = "activation",
    site: str = "blocks.{layer}.hook_resid_post",
    holdout: float = 0.25,
    read: str = "last",
    method: str = "mean_diff",
    max_fluency: float = 1.0,
    max_new_tokens: int = 16,
    cells_per_forward: int | None = None,
    progress: bool = True,
) -> SearchResult:
    """Sweep layer x strength; see the module docstring. Pairs are split into fitting and
    held-out (the last `holdout` share) unless `heldout` is given. `normalize`: strengths
    in units of the site's mean activation norm ("activation"), of a unit vector ("unit"),
    or of the vector as is ("none"). `max_fluency`: the largest fluency cost the
    recommended cell may have. `cells_per_forward`: strengths per forward (default: as
    many as fit in memory; 1 is the unbatched baseline)."""
    from tqdm.auto import tqdm

    if not strengths:
        raise MechscopeError("give at least one strength")
    for s in strengths:
        check_strength(s)
    if behaviour is not None and not prompts:
        raise MechscopeError("a behaviour function scores generated text: pass prompts= to generate from")
    vector, test = _vector_and_heldout(model, vector_or_pairs, heldout, layers, site, holdout, read, method, progress)
    vector.check_model(model)
    vector = vector.normalized(normalize)
    per_layer = _site_per_layer(vector, layers)
    grid = torch.tensor([float(s) for s in strengths])
    if behaviour is None:
        batch = Heldout.build(model, test)
        base_logp = batch.log_probs(model.run(batch.ids, attention_mask=batch.mask).logits)
        base = (base_logp, batch.preference(batch.scores(base_logp)))
        width = len(batch.ids) * batch.ids.shape[1] * (model.dims.d_vocab or 1)
        per_forward = cells_per_forward or max(1, LOGIT_BUDGET // width)
    else:
        assert prompts is not None
        plain = model.generate(list(prompts), max_new_tokens=max_new_tokens)
        base = (
            torch.tensor([float(behaviour(t[len(p) :])) for t, p in zip(plain, prompts)]),
            _nll(model, plain).mean(),
        )
    results = []
    for layer, name in tqdm(per_layer.items(), desc="steering search", unit="layer", disable=not progress):
        if behaviour is None:
            results.append(_pairs_layer(model, batch, vector, name, layer, grid, base, per_forward))
        else:
            results.append(_text_layer(model, prompts, behaviour, vector, name, grid, base, max_new_tokens))
    return SearchResult.build(
        model_name=model.name,
        layers=list(per_layer),
        sites=list(per_layer.values()),
        strengths=grid.tolist(),
        behaviour=torch.stack([r[0] for r in results]),
        fluency=torch.stack([r[1] for r in results]),
        anti_steerable=torch.stack([r[2] for r in results]),
        metric="logprob_diff" if behaviour is None else "text_fn",
        fluency_metric="kl" if behaviour is None else "nll_increase",
        max_fluency=max_fluency,
        normalize=normalize,
        heldout_pairs=len(test),
    )
