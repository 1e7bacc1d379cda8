"""Local text corpora as fixed-length token contexts, for lenses now and dictionaries later.

    cfg = DataConfig("corpus/*.jsonl", ctx_len=128, max_tokens=2**20)
    data = load_tokens(cfg, model.tokenizer)      # TokenData: .train [n, ctx], .heldout [m, ctx]

Sources, read in sorted path order so that the result never depends on the file system:
``.txt`` / ``.py`` / ``.md`` files (one document each), ``.jsonl`` (one document per line,
taken from ``text_field``), ``.parquet`` (the ``text_field`` column; needs pyarrow), a folder
of those (searched recursively), a glob (``corpus/**/*.txt``), or a folder written by
Hugging Face ``datasets``' ``save_to_disk`` (needs ``datasets``). Nothing is downloaded.

Documents are tokenised without special tokens and joined as ``EOS doc EOS doc ... EOS``;
the stream is cut into non-overlapping contexts of ``ctx_len`` tokens (the tail that does
not fill one is dropped). A seeded permutation of the contexts picks the held-out ones
(kept in corpus order) and the order of the training ones. Same files, tokenizer and
config: the same tensors, bit for bit.
"""

from __future__ import annotations

import glob as globlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch
from jaxtyping import Int
from torch import Tensor

from .errors import MechscopeError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".py", ".md")
"""Files read whole, as one document each."""
READABLE = (*TEXT_SUFFIXES, ".jsonl", ".parquet")
_DATASETS_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


@dataclass(frozen=True)
class DataConfig:
    """Where the text is and how it becomes token contexts."""

    path: str
    """A .txt/.py/.md/.jsonl/.parquet file, a folder of them, a glob, or a saved Hugging Face `datasets` folder."""
    ctx_len: int = 256
    """Tokens per context (the sequence length the model sees)."""
    text_field: str = "text"
    """Field of .jsonl records / column of .parquet files and datasets that holds the text."""
    max_tokens: int | None = None
    """Stop reading once the token stream has this many tokens (None: read everything)."""
    heldout_fraction: float = 0.05
    """Fraction of contexts held out for evaluation (at least one when positive)."""
    seed: int = 0
    """Seeds the choice of held-out contexts and the order of the training contexts."""

    def __post_init__(self):
        if self.ctx_len < 1:
            raise MechscopeError(f"ctx_len must be at least 1, got {self.ctx_len}")
        if not 0 <= self.heldout_fraction < 1:
            raise MechscopeError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise MechscopeError(f"max_tokens must be positive or None, got {self.max_tokens}")


@dataclass(frozen=True)
class TokenData:
    """Token contexts split into train (shuffled) and held-out (in corpus order)."""

    train: Int[Tensor, "n ctx"]
    heldout: Int[Tensor, "m ctx"]
    n_tokens: int
    """Tokens in the stream before cutting into contexts."""
    n_documents: int
    sources: tuple[str, ...] = field(default=())
    """The files read (or a description of the source)."""


# Finding and reading documents


def find_sources(path: str | Path) -> list[Path]:
    """The files (or the one datasets folder) a path, folder or glob stands for, sorted."""
    text = str(path)
    p = Path(text).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        if any((p / m).is_file() for m in _DATASETS_MARKERS):
            return [p]
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in READABLE)
        if not files:
            raise MechscopeError(f"no readable text in folder '{text}': expected files ending in {', '.join(READABLE)}")
        return files
    if any(c in text for c in "*?["):
        files = sorted(Path(f) for f in globlib.glob(str(p), recursive=True) if Path(f).is_file())
        if not files:
            raise MechscopeError(f"no files match '{text}'")
        return files
    raise MechscopeError(f"no such file, folder or glob: '{text}'")


def read_documents(path: str | Path, text_field: str = "text") -> Iterator[str]:
    """Every document under `path`, lazily, in sorted file order."""
    for source in find_sources(path):
        if source.is_dir():
            yield from _read_datasets_folder(source, text_field)
        elif source.suffix == ".jsonl":
            yield from _read_jsonl(source, text_field)
        elif source.suffix == ".parquet":
            yield from _read_parquet(source, text_field)
        else:
            yield _read_text(source)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MechscopeError(f"'{path}' is not UTF-8 text") from None


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise MechscopeError(f"{path}:{n}: not a JSON line ({err.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise MechscopeError(f"{path}:{n}: no '{text_field}' field (has: {keys}); set text_field")
            yield str(record[text_field])


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MechscopeError(f"reading '{path}' needs pyarrow: pip install pyarrow (or convert it to .jsonl)") from None
    table = pq.ParquetFile(path)
    if text_field not in table.schema_arrow.names:
        raise MechscopeError(f"{path}: no '{text_field}' column (has: {', '.join(table.schema_arrow.names)})")
    for batch in table.iter_batches(columns=[text_field]):
        yield from (str(t) for t in batch.column(0).to_pylist())


def _read_datasets_folder(path: Path, text_field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise MechscopeError(
            f"'{path}' is a Hugging Face datasets folder: reading it needs `pip install datasets`"
        ) from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else sorted(ds)[0]
        log.info("datasets folder %s: using split '%s'", path, split)
        ds = ds[split]
    if text_field not in ds.column_names:
        raise MechscopeError(f"{path}: no '{text_field}' column (has: {', '.join(ds.column_names)})")
    for record in ds.select_columns([text_field]):
        yield str(record[text_field])


# Tokens


def _separator(tokenizer) -> int:
    for attr in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise MechscopeError("the tokenizer has no EOS (or SEP) token to separate documents with")


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast tokenizers: one call, no per-text Python overhead
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def token_stream(
    documents: Iterable[str], tokenizer, max_tokens: int | None = None, batch: int = 64
) -> tuple[Tensor, int]:
    """`EOS doc EOS doc ... EOS` as one int64 tensor (cut at `max_tokens`), and the documents read."""
    eos = _separator(tokenizer)
    stream: list[int] = [eos]
    n_docs = 0
    pending: list[str] = []

    def flush() -> None:
        for ids in _encode(tokenizer, pending):
            stream.extend(ids)
            stream.append(eos)
        pending.clear()

    for doc in documents:
        if not doc:
            continue
        pending.append(doc)
        n_docs += 1
        if len(pending) == batch:
            flush()
            if max_tokens is not None and len(stream) >= max_tokens:
                break
    flush()
    out = torch.tensor(stream[:max_tokens] if max_tokens else stream, dtype=torch.long)
    return out, n_docs


def contexts(stream: Tensor, ctx_len: int) -> Int[Tensor, "n ctx"]:
    """Non-overlapping windows of `ctx_len` tokens; the incomplete tail is dropped."""
    n = len(stream) // ctx_len
    return stream[: n * ctx_len].view(n, ctx_len)


def split(ctxs: Tensor, heldout_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train in a seeded order, held-out in corpus order), chosen by one seeded permutation."""
    n = len(ctxs)
    k = 0 if heldout_fraction == 0 else max(1, round(n * heldout_fraction))
    if n - k < 1:
        raise MechscopeError(
            f"only {n} context(s): too few to hold out {heldout_fraction:.0%} and train on the rest; "
            "add text or lower ctx_len"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return ctxs[order[k:]], ctxs[order[:k].sort().values]


def tokenize_documents(
    documents: Iterable[str], tokenizer, cfg: DataConfig, sources: tuple[str, ...] = ()
) -> TokenData:
    """Documents -> `TokenData` per `cfg` (its `path` is not read)."""
    stream, n_docs = token_stream(documents, tokenizer, cfg.max_tokens)
    if n_docs == 0:
        raise MechscopeError(f"no text found in '{cfg.path}' (every document is empty)")
    ctxs = contexts(stream, cfg.ctx_len)
    if len(ctxs) == 0:
        raise MechscopeError(f"'{cfg.path}' has {len(stream)} tokens: not enough for one context of {cfg.ctx_len}")
    train, heldout = split(ctxs, cfg.heldout_fraction, cfg.seed)
    log.info(
        "data: %d documents, %d tokens -> %d train + %d held-out contexts of %d",
        n_docs,
        len(stream),
        len(train),
        len(heldout),
        cfg.ctx_len,
    )
    return TokenData(train, heldout, len(stream), n_docs, sources)


def load_tokens(cfg: DataConfig, tokenizer) -> TokenData:
    """Read `cfg.path`, tokenise with `tokenizer`, cut and split (see the module docstring)."""
    if tokenizer is None:
        raise MechscopeError("this model has no tokenizer: text data cannot be tokenised for it")
    sources = tuple(str(s) for s in find_sources(cfg.path))
    return tokenize_documents(read_documents(cfg.path, cfg.text_field), tokenizer, cfg, sources)


# A small corpus from the Python standard library (the domain of zoo:pycode)


PYCODE_HELDOUT_FRACTION = 0.05
"""`PycodeRecipe.heldout_fraction` (not imported: that module pulls in the model code)."""


def stdlib_documents(max_files: int | None = None, *, split: str = "heldout") -> list[str]:
    """Source files of the running Python's standard library (no tests, no site-packages).

    split: "heldout" (the files `zoo:pycode` never trained on; its hash-of-path rule),
    "train" (the files it trained on) or "all". `max_files` keeps the first N in path order.
    """
    from .zoo import pycode_data  # lazy: reads nothing at import

    if split not in ("heldout", "train", "all"):
        raise MechscopeError(f"split must be 'heldout', 'train' or 'all', got {split!r}")
    root = pycode_data.stdlib_root()
    files = pycode_data.list_sources(root, include_tests=False)
    if split != "all":
        files = [f for f in files if pycode_data.is_heldout(f, PYCODE_HELDOUT_FRACTION) == (split == "heldout")]
    texts: list[str] = []
    for rel in files:
        if max_files is not None and len(texts) >= max_files:
            break
        try:
            texts.append((root / rel).read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            continue
    if not texts:
        raise MechscopeError(f"no standard-library sources found under {root}")
    return texts


def write_stdlib_corpus(path: str | Path, max_files: int | None = None, *, split: str = "heldout") -> Path:
    """Write `stdlib_documents(...)` as a .jsonl file (one {"text": ...} per file), atomically."""
    from .io import write_text

    lines = (json.dumps({"text": t}) for t in stdlib_documents(max_files, split=split))
    return write_text(Path(path), "\n".join(lines) + "\n")


def repeated_random_tokens(
    vocab_size: int, seq_len: int, batch: int = 8, seed: int = 0, prefix_token: int | None = None
) -> Int[Tensor, "batch pos"]:
    """Rows of ``seq_len`` random token ids repeated twice: ``[prefix_token], r, r``.

    Within a row the ids of ``r`` are distinct (drawn without replacement from
    ``0..vocab_size-1`` minus ``prefix_token``), so every token of the second copy has
    exactly one earlier occurrence and the detectors' target positions are unambiguous.
    The same arguments give the same tokens (a seeded generator; global RNG untouched).
    """
    if batch < 1:
        raise MechscopeError(f"batch must be at least 1 (how many repeated sequences), got {batch}")
    allowed = torch.tensor([t for t in range(vocab_size) if t != prefix_token])
    if not 1 <= seq_len <= len(allowed):
        raise MechscopeError(
            f"seq_len must be between 1 and {len(allowed)} (the distinct tokens available "
            f"in a vocabulary of {vocab_size}), got {seq_len}"
        )
    gen = torch.Generator().manual_seed(seed)
    span = allowed[torch.rand(batch, len(allowed), generator=gen).argsort(-1)[:, :seq_len]]
    rows = torch.cat([span, span], dim=1)
    if prefix_token is not None:
        rows = torch.cat([torch.full((batch, 1), prefix_token), rows], dim=1)
    return rows
