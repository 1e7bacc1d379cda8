"""Corpus and tokenizer for the `zoo:pycode` model: the Python standard library's own source.

The corpus is every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` except
``site-packages`` and (by default) the test suites, read as UTF-8. Files are
split into train and held-out by a hash of their path relative to the stdlib root, so the
split does not depend on the order in which the file system lists them. Because the stdlib
differs across Python versions, :func:`load_corpus` returns a fingerprint (a SHA-256 of the
sorted relative paths and byte sizes) that the model card records.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mechscope.errors import MechscopeError

if TYPE_CHECKING:
    from mechscope.zoo.pycode import PycodeRecipe

logger = logging.getLogger(__name__)

EOS = "<|endoftext|>"
"""The one special token: separates files, starts every sequence, and pads."""

TEST_DIRS = frozenset({"test", "tests", "idle_test"})
"""Directory names whose contents count as test suites."""

SKIP_DIRS = frozenset({"site-packages", "__pycache__"})
"""Never read: third-party packages and caches. (``pydoc_data/topics.py``, 750 KB of generated
English help text, is kept: it lands in the held-out split and dominates the held-out loss.)"""


@dataclass(frozen=True)
class Corpus:
    """The stdlib source, split into train and held-out files."""

    root: Path
    """The stdlib directory the files were read from."""
    train_files: tuple[str, ...]
    """Relative paths (POSIX) of the training files, sorted."""
    heldout_files: tuple[str, ...]
    """Relative paths (POSIX) of the held-out files, sorted."""
    train_texts: tuple[str, ...]
    """Contents of ``train_files``, in the same order."""
    heldout_texts: tuple[str, ...]
    """Contents of ``heldout_files``, in the same order."""
    fingerprint: str
    """SHA-256 over the sorted ``path<TAB>size`` lines of every file used."""
    n_skipped: int
    """Files skipped because they are not valid UTF-8."""


def stdlib_root() -> Path:
    """The directory of the running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_sources(root: Path, include_tests: bool) -> list[str]:
    """Sorted relative POSIX paths of the ``.py`` files under ``root``, minus ``SKIP_DIRS``."""
    out = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if SKIP_DIRS.intersection(parts[:-1]):
            continue
        if not include_tests and TEST_DIRS.intersection(parts[:-1]):
            continue
        if path.is_file():
            out.append("/".join(parts))
    return sorted(out)


def is_heldout(relpath: str, fraction: float) -> bool:
    """Whether a file belongs to the held-out split: a hash of its path, not its position."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def fingerprint(root: Path, relpaths: list[str]) -> str:
    """SHA-256 of the sorted ``path<TAB>size`` lines: changes when the stdlib does."""
    h = hashlib.sha256()
    for rel in sorted(relpaths):
        h.update(f"{rel}\t{(root / rel).stat().st_size}\n".encode("utf-8"))
    return h.hexdigest()


def _read(root: Path, relpaths: list[str]) -> tuple[list[str], list[str], int]:
    """Read files as UTF-8, dropping (and counting) the ones that are not."""
    kept, texts, skipped = [], [], 0
    for rel in relpaths:
        try:
            texts.append((root / rel).read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            skipped += 1
            continue
        kept.append(rel)
    return kept, texts, skipped


def load_corpus(
    heldout_fraction: float,
    include_tests: bool = False,
    max_files: int | None = None,
    root: Path | None = None,
) -> Corpus:
    """Read the stdlib and split it by file; ``max_files`` caps each split (for tests)."""
    root = stdlib_root() if root is None else root
    files = list_sources(root, include_tests)
    train = [f for f in files if not is_heldout(f, heldout_fraction)]
    heldout = [f for f in files if is_heldout(f, heldout_fraction)]
    if max_files is not None:
        train, heldout = train[:max_files], heldout[: max(1, max_files // 4)]
    train, train_texts, skip_a = _read(root, train)
    heldout, heldout_texts, skip_b = _read(root, heldout)
    logger.info("corpus: %d train files, %d held-out files from %s", len(train), len(heldout), root)
    return Corpus(
        root=root,
        train_files=tuple(train),
        heldout_files=tuple(heldout),
        train_texts=tuple(train_texts),
        heldout_texts=tuple(heldout_texts),
        fingerprint=fingerprint(root, train + heldout),
        n_skipped=skip_a + skip_b,
    )


def train_tokenizer(texts: tuple[str, ...], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style) on ``texts``; id 0 is ``<|endoftext|>``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Give a raw ``tokenizers`` object the Hugging Face interface and special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
    )


def encode(tokenizer: PreTrainedTokenizerFast, texts: tuple[str, ...]) -> torch.Tensor:
    """One long int32 stream: ``<|endoftext|> file <|endoftext|> file ...``."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    assert isinstance(eos, int)  # one token in, one id out
    stream: list[int] = []
    for enc in tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False):
        stream.append(eos)
        stream.extend(enc.ids)
    stream.append(eos)
    return torch.tensor(stream, dtype=torch.int32)


def chunks_of(stream: torch.Tensor, context: int) -> torch.Tensor:
    """Non-overlapping windows of ``context + 1`` tokens (inputs plus next-token targets)."""
    n = (len(stream) - 1) // context
    if n < 1:
        raise MechscopeError(f"corpus too small: {len(stream)} tokens for context {context}")
    return stream[: n * context + 1].unfold(0, context + 1, context)


@functools.lru_cache(maxsize=4)
def perm(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the chunks in one epoch: a pure function of (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def eval_subset(chunks: torch.Tensor, recipe: PycodeRecipe) -> torch.Tensor:
    """A fixed, seeded sample of at most ``recipe.eval_sequences`` windows."""
    return chunks[perm(len(chunks), recipe.seed, -1)[: recipe.eval_sequences]]


def batch_for_step(
    chunks: torch.Tensor, step: int, recipe: PycodeRecipe, vocab_size: int | None = None
) -> torch.Tensor:
    """The training batch of ``step`` [batch, context + 1]: a pure function of the step.

    Each epoch visits every chunk once in a seeded order; resuming needs only the step. A
    seeded ``repeat_fraction`` of rows tile their first ``span`` tokens instead, and a
    ``random_fraction`` tile a span of random ids (needs ``vocab_size``).
    """
    n, b = len(chunks), recipe.batch_size
    idx = []
    for i in range(step * b, (step + 1) * b):
        idx.append(perm(n, recipe.seed, i // n)[i % n])
    batch = chunks[torch.stack(idx)].long()
    if recipe.repeat_fraction > 0:
        g = torch.Generator().manual_seed(recipe.seed * 7_919 + step)
        rows = torch.rand(b, generator=g) < recipe.repeat_fraction
        lo, hi = recipe.repeat_span
        span = torch.randint(lo, hi + 1, (b, 1), generator=g)
        tiled = batch.gather(1, torch.arange(batch.shape[1]) % span)  # [b, context + 1]
        batch = torch.where(rows[:, None], tiled, batch)
    if recipe.random_fraction > 0:
        if vocab_size is None:
            raise ValueError("random_fraction > 0 needs the vocabulary size")
        g = torch.Generator().manual_seed(recipe.seed * 6_007 + step)
        rows = torch.rand(b, generator=g) < recipe.random_fraction
        batch = torch.where(rows[:, None], random_tiled(b, batch.shape[1], vocab_size, recipe, g), batch)
    return batch


def random_tiled(b: int, length: int, vocab_size: int, recipe: PycodeRecipe, g: torch.Generator) -> torch.Tensor:
    """Rows [b, length]: ``<|endoftext|>`` (id 0), then a span of random ids 1..V-1 (each
    repeating the id two back with ``alternation_prob``, never chained) tiled to fill."""
    lo, hi = recipe.repeat_span
    ids = torch.randint(1, vocab_size, (b, hi), generator=g)
    follow = torch.rand(b, hi, generator=g) < recipe.alternation_prob
    follow[:, :2] = False
    for t in range(2, hi):
        follow[:, t] &= ~follow[:, t - 2]  # only the id two back predicts a repeat
        ids[:, t] = torch.where(follow[:, t], ids[:, t - 2], ids[:, t])
    span = torch.randint(lo, hi + 1, (b, 1), generator=g)
    tiled = ids.gather(1, torch.arange(length - 1) % span)
    return torch.cat([torch.zeros(b, 1, dtype=tiled.dtype), tiled], dim=1)
