"""What the dashboard's prompt page shows, read from the methods: per-token top latents of a
store's dictionary (`SparseCoder.encode`), the logit-lens strip (`lens.logit_lens`), every
head's attention pattern (recorded `attn.hook_pattern`), and, when a confidence probe is
given and `mechscope.concepts` is installed, its calibrated P(the model is right) per token.
Runs on the `ModelWorker` thread; holds no science of its own."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import MechscopeError

log = logging.getLogger(__name__)

TOP_LATENTS = 8
"""Latents listed per token."""


class PromptTooLong(MechscopeError):
    """A prompt over the server's token limit (answered 413)."""


def load_probe(path: str | Path | None):
    """A confidence probe from `mechscope.concepts`, or None (no path, or the package absent)."""
    if path is None:
        return None
    try:
        from ..concepts.confidence import ConfidenceProbe
    except ImportError:
        log.warning("--probe %s ignored: this installation has no mechscope.concepts", path)
        return None
    return ConfidenceProbe.load(path)


def _tokens(model, prompt: str, limit: int) -> torch.Tensor:
    if not prompt:
        raise MechscopeError("the prompt is empty: type some text")
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"] if model.tokenizer else None
    if ids is None:
        raise MechscopeError(f"{model.name} has no tokenizer: the prompt page needs one")
    context = model.context_length or limit
    if len(ids) > min(limit, context):
        raise PromptTooLong(f"the prompt has {len(ids)} tokens; this server takes at most {min(limit, context)}")
    return torch.tensor([ids])


def _latents(acts: torch.Tensor) -> list[list[tuple[int, float]]]:
    top = acts.topk(min(TOP_LATENTS, acts.shape[-1]), dim=-1)
    return [
        [(int(i), round(float(v), 5)) for i, v in zip(ids, vals) if v > 0]
        for ids, vals in zip(top.indices.tolist(), top.values.tolist())
    ]


def _lens(model, tokens: torch.Tensor) -> dict:
    from ..lens import logit_lens

    lens = logit_lens(model, tokens, k=1, include_mid=False)
    return {
        "layers": list(lens.layers),
        "top": [
            [lens.text(lens.top_ids[li, 0, p, 0]) for p in range(tokens.shape[1])] for li in range(len(lens.layers))
        ],
        "prob": [
            [round(float(lens.top_probs[li, 0, p, 0]), 4) for p in range(tokens.shape[1])]
            for li in range(len(lens.layers))
        ],
    }


@torch.no_grad()
def analyse(model, prompt: str, readers: dict, probe, limit: int) -> dict:
    """{tokens, latents: {store: [[(latent, act)] per token]}, lens, attention, probe};
    `readers`: a `features.LatentReader` per store whose dictionary this model can run."""
    tokens = _tokens(model, prompt, limit)
    patterns = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.dims.n_layers)]
    shared = [s for r in readers.values() if r.single for s in r.sites]  # read from this one run
    record = sorted(set(patterns) | set(shared) | ({probe.site} if probe is not None else set()))
    run = model.run(tokens, record=record)
    out: dict = {"tokens": run.str_tokens(0), "latents": {}, "probe": None}
    for name, reader in readers.items():
        out["latents"][name] = _latents((reader.encode(run.cache) if reader.single else reader(tokens))[0])
    attention = torch.stack([run.cache[p][0] for p in patterns]).float()  # [layer, head, query, key]
    out["attention"] = ((attention * 1000).round() / 1000).tolist()
    out["lens"] = _lens(model, tokens)
    if probe is not None:
        x = run.cache[probe.site]
        out["probe"] = [round(float(p), 4) for p in probe(x.flatten(2))[0].tolist()]
    return out
