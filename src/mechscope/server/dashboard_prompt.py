"""What the dashboard's prompt page shows, read from the methods: per-token top latents of a
store's dictionary (`SparseCoder.encode`), the logit-lens strip (`lens.logit_lens`'s
statistics), every head's attention pattern (recorded `attn.hook_pattern`), and, when a
confidence probe is given and `mechscope.concepts` is installed, its calibrated P(the model
is right) per token. One forward pass records everything; runs on the `ModelWorker` thread;
holds no science of its own."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
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


MILLI = [repr(i / 1000) for i in range(1001)]
"""The JSON text of every probability rounded to 3 decimals."""


def attention_json(attention: torch.Tensor) -> str:
    """[layer][head][query][key] probabilities, rounded to 3 decimals, as JSON text: each value
    is looked up among the 1001 possible strings (json.dumps of the 65k floats of a 64-token
    prompt on pycode costs more than its forward pass)."""
    n_layers, n_heads, n_query, _ = attention.shape
    milli = (attention.float() * 1000).round().clamp(0, 1000).to(torch.int16).flatten(0, 2).tolist()
    rows = ["[" + ",".join([MILLI[v] for v in row]) + "]" for row in milli]
    heads = ["[" + ",".join(rows[i : i + n_query]) + "]" for i in range(0, len(rows), n_query)]
    layers = ["[" + ",".join(heads[i : i + n_heads]) + "]" for i in range(0, len(heads), n_heads)]
    return "[" + ",".join(layers) + "]"


def lens_strip(model, run, streams: list, texts: dict[int, str]) -> dict:
    """The logit-lens strip (top-1 token and its probability per stream x position) of a
    recorded run: `lens.logit_lens`'s own statistics (final norm + unembedding, one GEMM per
    chunk) over the streams `run` recorded, so the prompt needs one forward pass, not two.
    `texts`: every token id's text (decoded once per model)."""
    from ..lens.logit import stream_statistics

    stats = stream_statistics(model, [run.cache[s.site] for s in streams], None, None, [], 1)
    ids, probs = stats["top_ids"][:, 0, :, 0].tolist(), stats["top_probs"][:, 0, :, 0].tolist()
    return {
        "layers": [s.label for s in streams],
        "top": [[texts.get(t, str(t)) for t in row] for row in ids],
        "prob": [[round(p, 4) for p in row] for row in probs],
    }


class Analyser:
    """The prompt page's analysis, with what does not depend on the prompt worked out once
    per model (sites to record, lens streams, token texts) and the last `cache_size` answers
    kept as encoded JSON, at most `cache_bytes` of it (a 256-token answer is ~5 MB of attention);
    a researcher re-sends the same prompt often, and a hit costs no model call."""

    def __init__(self, model, readers: dict, probe, limit: int, cache_size: int = 64, cache_bytes: int = 64 << 20):
        from ..lens import _common as lens_common
        from ..tokens import decode_many

        self.model, self.readers, self.probe, self.limit = model, readers, probe, limit
        # the model's own output is the last block's resid_post: one forward gives every stream
        self.streams = lens_common.streams(model, include_mid=False)
        self.patterns = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.dims.n_layers)]
        self.texts = decode_many(model, range(model.dims.d_vocab))
        self.cache: OrderedDict[tuple, bytes] = OrderedDict()
        self.cache_size, self.cache_bytes, self._lock = cache_size, cache_bytes, threading.Lock()

    def _record(self, readers: dict) -> list[str]:
        shared = [s for r in readers.values() if r.single for s in r.sites]  # read from this one run
        sites = set(self.patterns) | {s.site for s in self.streams} | set(shared)
        sites |= {self.probe.site} if self.probe is not None else set()
        return sorted(sites, key=self.model.table.order.__getitem__)

    def cached(self, key: tuple) -> bytes | None:
        with self._lock:
            if key in self.cache:
                self.cache.move_to_end(key)
                return self.cache[key]
        return None

    @torch.no_grad()
    def analyse(self, prompt: str, names: tuple[str, ...]) -> dict:
        """{tokens, latents: {store: [[(latent, act)] per token]}, lens, attention, probe}
        for the stores `names` (each a `features.LatentReader` this model can run);
        `attention` is a tensor [layer, head, query, key] (see `answer` for its JSON)."""
        model, readers = self.model, {n: self.readers[n] for n in names}
        tokens = _tokens(model, prompt, self.limit)
        run = model.run(tokens, record=self._record(readers), logits=False)
        out: dict = {"tokens": run.str_tokens(0), "latents": {}, "probe": None}
        for name, reader in readers.items():
            out["latents"][name] = _latents((reader.encode(run.cache) if reader.single else reader(tokens))[0])
        out["attention"] = torch.stack([run.cache[p][0] for p in self.patterns])  # [layer, head, query, key]
        out["lens"] = lens_strip(model, run, self.streams, self.texts)
        if self.probe is not None:
            x = run.cache[self.probe.site]
            out["probe"] = [round(float(p), 4) for p in self.probe(x.flatten(2))[0].tolist()]
        return out

    def answer(self, prompt: str, names: tuple[str, ...]) -> bytes:
        """The analysis as JSON bytes (encoded here, on the model thread, not on the event loop), cached."""
        out = self.analyse(prompt, names)
        attention = attention_json(out.pop("attention"))
        body = json.dumps(out, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        data = f'{body[:-1]},"attention":{attention}}}'.encode("utf-8")
        with self._lock:
            self.cache[(prompt, names)] = data
            held = sum(map(len, self.cache.values()))
            while len(self.cache) > self.cache_size or (held > self.cache_bytes and len(self.cache) > 1):
                held -= len(self.cache.popitem(last=False)[1])
        return data
