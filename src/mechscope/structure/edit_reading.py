"""What a rank-one update means: the key it responds to and the tokens it promotes.

For ΔW = σ u vᵀ ([in, out] orientation) of a matrix whose input is a recorded site (the
keys: `mlp.hook_post` for W_out, `hook_mlp_in` for W_in / W_gate, `attn.hook_z` for W_O):

- keys are recorded on the base model, for candidate subjects at the last token of each
  name in a few templates (averaged over templates, as ROME averages k* over contexts), or
  at every token of a corpus. The update adds σ (uᵀk) v for a key k, so candidates are
  ranked by their response |uᵀk|: the key the edit fires on most. (ROME writes
  ΔW ∝ (C⁻¹k*) Λᵀ with C the keys' second moment on its own corpus; re-estimating C on
  another corpus and ranking by cos(k, C u) put the subject only second on zoo:pycode,
  while the response, which needs no C, put it first: C⁻¹ already turns u away from the
  directions that every key shares.) cos(k, u) is reported beside it;
- the sign of (u, v) is fixed so that the top match's response uᵀk is positive: v is then
  what the edit adds for it;
- promotion: the base model runs the top match's texts with σ (uᵀk) v added at the
  matrix's output site at the subject's position (exactly what the update adds there), and
  the tokens are ranked by the mean change of log-probability at each text's last token;
  `promoted_direct` is the logit lens of v (final norm and unembedding) for comparison.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..edits import add
from ..errors import MechscopeError
from ..tokens import decode_many
from .lowrank import LowRankSVD

log = logging.getLogger(__name__)
KEY_SITES = {
    "W_out": ("blocks.{layer}.mlp.hook_post", "blocks.{layer}.hook_mlp_out"),
    "W_in": ("blocks.{layer}.hook_mlp_in", None),
    "W_gate": ("blocks.{layer}.hook_mlp_in", None),
    "W_O": ("blocks.{layer}.attn.hook_z", "blocks.{layer}.hook_attn_out"),
}
"""kind -> (site of the matrix's input, site its output is added to; None: not the residual)."""
TEMPLATES = ("{}", "x = {}", "import {}", "    return {}", "print({}", "if {}", "self.{}", "def f():\n    {}")
"""Default contexts for candidate names; "{}" is replaced by the name."""


def _flat(x: Tensor) -> Tensor:
    """[batch, pos, ...] -> [batch, pos, features] (hook_z's heads and d_head joined)."""
    return x.flatten(2).double()


def candidate_keys(model, site: str, candidates: Sequence[str], templates: Sequence[str]):
    """(keys [n_cand, d] averaged over templates at each name's last token, the texts, their
    subject positions counted from the end, and the key at each text's subject position
    [n_cand · n_templates, d])."""
    if any(not isinstance(n, str) or not n for n in candidates):
        raise MechscopeError("every candidate must be a non-empty string (a subject name)")
    texts, negs = [], []
    for name in candidates:
        for t in templates:
            if "{}" not in t:
                raise MechscopeError(f"template {t!r} has no '{{}}' for the candidate name")
            text = t.format(name)
            head = t[: t.index("{}")] + name
            texts.append(text)
            negs.append(len(model.tokenize(head)["input_ids"][0]) - len(model.tokenize(text)["input_ids"][0]) - 1)
    run = model.run(texts, record=site, logits=False)
    keys, lengths = _flat(run.cache[site]), run.lengths
    rows = torch.arange(len(texts))
    at = keys[rows, lengths + torch.tensor(negs)]
    per_name = at.view(len(candidates), len(templates), -1).mean(1)
    return per_name, texts, negs, at


def corpus_keys(model, site: str, corpus, max_tokens: int):
    """(the token ids [n, ctx], their keys [n, ctx, d]) of the corpus cut into contexts."""
    from ..data import contexts, read_documents, token_stream

    if model.tokenizer is None:
        raise MechscopeError(f"{model.name} has no tokenizer: a text corpus cannot be read for it")
    docs = read_documents(corpus) if isinstance(corpus, (str, Path)) else list(corpus)
    stream, _ = token_stream(docs, model.tokenizer, max_tokens)
    ctx = min(64, model.context_length or 64)
    ids = contexts(stream, ctx)
    if len(ids) == 0:
        raise MechscopeError(f"the corpus has {len(stream)} tokens: fewer than one context of {ctx}")
    return ids, _flat(model.run(ids, record=site, logits=False, batch_size=32).cache[site])


def _cos(keys: Tensor, direction: Tensor) -> Tensor:
    return (keys @ direction) / (keys.norm(dim=-1) * direction.norm()).clamp_min(1e-30)


def _promoted(model, value_site: str, svd: LowRankSVD, items, negs, keys_at: Tensor, top: int) -> list[dict]:
    """Tokens by the mean change of log-probability at each text's last token when the update's
    own output σ (uᵀk) v is added at the subject's position (texts or token ids, one at a
    time: each has its own subject position)."""
    u, s, v = svd.U[:, 0].double(), float(svd.S[0]), svd.V[:, 0].double()
    deltas = []
    for item, neg, key in zip(items, negs, keys_at):
        before = model.run(item).logits[0, -1]
        value = (s * float(key @ u) * v).to(before.dtype).to(before.device).view(1, 1, -1)
        after = model.run(item, edits=[add(value_site, value, positions=neg)]).logits[0, -1]
        deltas.append((after.log_softmax(-1) - before.log_softmax(-1)).cpu())
    return _top_tokens(model, torch.stack(deltas).mean(0), top)


def _top_tokens(model, scores: Tensor, top: int) -> list[dict]:
    values, ids = scores.float().topk(min(top, len(scores)))
    names = decode_many(model, ids.tolist())
    return [{"token": names[int(i)], "id": int(i), "score": float(x)} for x, i in zip(values, ids)]


def _direct(model, v: Tensor, top: int) -> list[dict]:
    v = v.to(model.W_U.dtype).to(model.device)
    return _top_tokens(model, (model.to_logits(v) - model.to_logits(torch.zeros_like(v))).cpu(), top)


def read_update(base, row: dict, svd: LowRankSVD, corpus, candidates, templates, *, top: int, max_tokens: int):
    """The reading of one rank-one update (see the module docstring); None when its matrix
    has no key site."""
    sites = KEY_SITES.get(row["kind"])
    if sites is None or row["layer"] is None:
        return None
    key_site = sites[0].format(layer=row["layer"])
    value_site = sites[1].format(layer=row["layer"]) if sites[1] else None
    with torch.no_grad():
        from_corpus = corpus_keys(base, key_site, corpus, max_tokens) if corpus is not None else None
        if not candidates:
            assert from_corpus is not None  # edit_forensics reads only with candidates or a corpus
            return _read_corpus(base, svd, from_corpus, value_site, top)
        found = candidate_keys(base, key_site, candidates, templates or TEMPLATES)
        reading = _read_candidates(base, svd, found, candidates, value_site, top)
        if from_corpus is not None:  # both: the corpus tokens' matches beside the candidates'
            ids, keys = from_corpus
            reading["corpus_keys"] = _corpus_matches(base, svd, ids, keys, top)[0]
        return reading


def _signed(svd: LowRankSVD, key: Tensor) -> tuple[LowRankSVD, int]:
    """(u, v) signed so that the key's response uᵀk is positive, and that sign."""
    sign = 1 if float(key @ svd.U[:, 0].double()) >= 0 else -1
    return LowRankSVD(sign * svd.U, svd.S, sign * svd.V, svd.residual, svd.solver, svd.tol), sign


def _promotion(base, svd: LowRankSVD, value_site: str | None, items, negs, keys_at: Tensor, top: int) -> dict:
    if value_site is None or not base.has_lm_head:
        return {"promoted": [], "promoted_direct": []}
    return {
        "promoted": _promoted(base, value_site, svd, items, negs, keys_at, top),
        "promoted_direct": _direct(base, svd.V[:, 0], top),
    }


def _read_candidates(base, svd, found, candidates, value_site, top) -> dict:
    per_name, texts, negs, at = found
    scores = (per_name @ svd.U[:, 0].double()).abs()
    order = scores.argsort(descending=True)
    best = int(order[0])
    svd, sign = _signed(svd, per_name[best])
    u = svd.U[:, 0].double()
    cos = _cos(per_name, u)
    keys = [
        {"name": candidates[i], "score": float(scores[i]), "signed": float(per_name[i] @ u), "cos": float(cos[i])}
        for i in order[:top].tolist()
    ]
    n_t = len(texts) // len(candidates)
    rows = list(range(best * n_t, (best + 1) * n_t))
    contexts = [texts[i] for i in rows]
    promotion = _promotion(base, svd, value_site, contexts, [negs[i] for i in rows], at[rows], top)
    return {"keys": keys, "sign": sign, "contexts": contexts, **promotion}


def _corpus_matches(base, svd: LowRankSVD, ids: Tensor, keys: Tensor, top: int) -> tuple[list[dict], Tensor]:
    """Corpus tokens by response (the best position of each distinct token; the first position
    of each context, an attention sink, left out), and the positions in order [n·ctx]."""
    u = svd.U[:, 0].double()
    scores = (keys @ u).abs()  # [n, ctx]
    scores[:, 0] = 0.0
    order = scores.flatten().argsort(descending=True)
    seen: dict[int, tuple[int, int]] = {}
    for f in order.tolist():
        r, p = divmod(f, ids.shape[1])
        seen.setdefault(int(ids[r, p]), (r, p))
        if len(seen) >= top:
            break
    names = decode_many(base, list(seen))
    matches = []
    for tok, (r, p) in seen.items():
        context = base.tokenizer.decode(ids[r, max(0, p - 8) : p + 1].tolist())
        cos = float(_cos(keys[r, p], u))
        matches.append({"name": names[tok], "id": tok, "score": float(scores[r, p]), "cos": cos, "context": context})
    return matches, order


def _read_corpus(base, svd, from_corpus, value_site, top, n_contexts: int = 8) -> dict:
    """Corpus tokens by response, and promotion over the contexts of the best `n_contexts`
    positions, each cut after its matched token."""
    ids, keys = from_corpus
    matches, order = _corpus_matches(base, svd, ids, keys, top)
    best = [divmod(f, ids.shape[1]) for f in order[:n_contexts].tolist()]
    svd, sign = _signed(svd, keys[best[0][0], best[0][1]])
    items = [ids[r, : p + 1] for r, p in best]
    at = torch.stack([keys[r, p] for r, p in best])
    contexts = [base.tokenizer.decode(i.tolist()[-12:]) for i in items]
    promotion = _promotion(base, svd, value_site, items, [-1] * len(items), at, top)
    return {"keys": matches, "sign": sign, "contexts": contexts, **promotion}
