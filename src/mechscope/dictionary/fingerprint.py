"""What a dictionary is trained on, as a few comparable fields: the model (name and a hash
of its config) and the data (a hash of the token contexts, or an activation cache's
manifest). A checkpoint records them, and resuming with other data or another model is
refused instead of silently mixing two runs' activations."""

from __future__ import annotations

import hashlib
import json

import torch
from torch import Tensor

from .cache import CacheReader
from .source import ActivationSource
from .stacked import StackedSource

_CACHE_FIELDS = ("model", "contexts", "ctx_len", "contexts_sha256", "dtype", "source", "n_tokens")
"""What in a cache's manifest decides the rows read (not its shard size nor its other sites)."""


def _sha256(t: Tensor) -> str:
    array = t.detach().to("cpu", torch.int64).contiguous().numpy()
    return hashlib.sha256(array.data).hexdigest()  # as the cache's contexts_sha256


def model_identity(model) -> dict:
    """The model's name and a SHA-256 of its config (private and version fields left out)."""
    config = getattr(getattr(model, "hf", None), "config", None)
    fields = (
        {}
        if config is None
        else {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    )
    text = json.dumps(fields, sort_keys=True, default=str)
    return {"name": model.name, "config_sha256": hashlib.sha256(text.encode()).hexdigest()}


def data_identity(stream) -> dict:
    """The model and data behind a stream of batches (`ActivationSource`, `CacheReader`,
    `StackedSource`, or any stream with a `fingerprint()` method)."""
    if isinstance(stream, StackedSource):
        return {
            "stacked": [data_identity(s) for s in dict.fromkeys(s for s, _ in stream.members)],
            "blocks": list(stream.blocks),
            "projections": {
                k: hashlib.sha256(v.detach().float().cpu().contiguous().numpy().data).hexdigest()
                for k, v in sorted(stream.projections.items())
            },
        }
    if isinstance(stream, CacheReader):
        cache = {"cache": {k: stream.meta.get(k) for k in _CACHE_FIELDS}}
        order = getattr(stream, "identity", None)  # a reader with its own order (streaming.ShardStream)
        return {**cache, **order()} if callable(order) else cache
    if isinstance(stream, ActivationSource):
        cfg = stream.cfg
        return {
            "model": model_identity(stream.model),
            "contexts": len(stream.contexts),
            "ctx_len": int(stream.contexts.shape[1]),
            "contexts_sha256": _sha256(stream.contexts),
            "exclude_first": cfg.exclude_first,
            "exclude_tokens": list(cfg.exclude_tokens),
            "buffer_contexts": cfg.buffer_contexts,
        }
    custom = getattr(stream, "fingerprint", None)
    return custom() if callable(custom) else {"stream": type(stream).__name__}


def differences(saved, now, prefix: str = "") -> list[str]:
    """What differs between two identities, field by field in dotted names, with both
    values where they are short ("train.lr was 0.001, now 0.002"; "data.contexts_sha256 differs")."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [
            d
            for k in dict.fromkeys([*saved, *now])
            for d in differences(saved.get(k), now.get(k), f"{prefix}.{k}" if prefix else str(k))
        ]
    if isinstance(saved, list) and isinstance(now, list) and len(saved) == len(now):
        return [d for i, (a, b) in enumerate(zip(saved, now)) for d in differences(a, b, f"{prefix}[{i}]")]
    if saved == now:
        return []
    a, b = json.dumps(saved, default=str), json.dumps(now, default=str)
    return [f"{prefix} was {a}, now {b}" if len(a) + len(b) < 60 else f"{prefix} differs"]
