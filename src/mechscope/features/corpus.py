"""A corpus as a stream of fixed-length token contexts, read lazily so that memory does not
grow with its length, and an identity for it (so a resumed build reads the same text).

Documents are joined as `EOS doc EOS doc ...` (as `mechscope.data` joins them) and cut into
non-overlapping contexts of `ctx_len` tokens in corpus order; the tail of the last one is
dropped. A corpus is a path (file, folder or glob that `mechscope.data` reads), a list of
texts, or a token tensor [n, ctx_len]."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..data import find_sources, read_documents
from ..errors import MechscopeError

Corpus = str | Path | Sequence[str] | Tensor


def identity(corpus: Corpus, ctx_len: int, max_tokens: int | None, text_field: str = "text") -> dict:
    """What the corpus is, as comparable fields (paths with their sizes, or a hash of the content)."""
    if isinstance(corpus, Tensor):
        data = corpus.to(torch.int64).contiguous().numpy().tobytes()
        return {"kind": "tokens", "sha256": hashlib.sha256(data).hexdigest(), "max_tokens": max_tokens}
    if isinstance(corpus, (str, Path)):
        files = [(str(p), p.stat().st_size) for p in find_sources(corpus)]
        return {
            "kind": "files",
            "path": str(corpus),
            "files": files,
            "ctx_len": ctx_len,
            "max_tokens": max_tokens,
            "text_field": text_field,
        }
    digest = hashlib.sha256()
    for text in corpus:
        digest.update(hashlib.sha256(str(text).encode()).digest())
    return {
        "kind": "texts",
        "n": len(corpus),
        "sha256": digest.hexdigest(),
        "ctx_len": ctx_len,
        "max_tokens": max_tokens,
    }


def _eos(tokenizer) -> int:
    for name in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise MechscopeError("the tokenizer has no EOS/BOS token to separate documents: give a token tensor instead")


def _documents(corpus, text_field: str) -> Iterator[str]:
    if isinstance(corpus, (str, Path)):
        yield from read_documents(corpus, text_field)
    else:
        yield from (str(t) for t in corpus)


def contexts(
    corpus: Corpus, tokenizer, ctx_len: int, max_tokens: int | None = None, text_field: str = "text", group: int = 64
) -> Iterator[Tensor]:
    """Contexts [ctx_len] (int64) of the corpus, one at a time, in corpus order; at most
    `max_tokens` tokens in all (whole contexts only)."""
    limit = None if max_tokens is None else max_tokens // ctx_len
    produced = 0
    if isinstance(corpus, Tensor):
        if corpus.ndim != 2 or corpus.shape[1] != ctx_len:
            raise MechscopeError(f"a token corpus must be [n, {ctx_len}] (ctx_len), got {list(corpus.shape)}")
        for row in corpus[:limit]:
            yield row.to(torch.int64)
        return
    if tokenizer is None:
        raise MechscopeError("this model has no tokenizer: give the corpus as a token tensor [n, ctx_len]")
    eos = _eos(tokenizer)
    buffer: list[int] = [eos]
    pending: list[str] = []

    def encode(texts: list[str]) -> list[list[int]]:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    for doc in _documents(corpus, text_field):
        if doc:
            pending.append(doc)
        if len(pending) < group:
            continue
        for ids in encode(pending):
            buffer += [*ids, eos]
        pending.clear()
        while len(buffer) >= ctx_len:
            if limit is not None and produced >= limit:
                return
            yield torch.tensor(buffer[:ctx_len], dtype=torch.int64)
            buffer, produced = buffer[ctx_len:], produced + 1
    for ids in encode(pending) if pending else []:
        buffer += [*ids, eos]
    while len(buffer) >= ctx_len and (limit is None or produced < limit):
        yield torch.tensor(buffer[:ctx_len], dtype=torch.int64)
        buffer, produced = buffer[ctx_len:], produced + 1


def batches(stream: Iterator[Tensor], size: int) -> Iterator[Tensor]:
    """Stack contexts into [size, ctx_len] batches (the last may be smaller)."""
    chunk: list[Tensor] = []
    for row in stream:
        chunk.append(row)
        if len(chunk) == size:
            yield torch.stack(chunk)
            chunk = []
    if chunk:
        yield torch.stack(chunk)
