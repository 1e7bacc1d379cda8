"""`zoo:pycode`: a small Llama-style causal LM trained on the Python standard library.

The recipe is deterministic (same seed, same stdlib: same weights, bit for bit, on the same
machine and torch build), trainable on two CPU cores in well under 40 minutes, resumable
from ``out_dir/checkpoint/`` and produces a Hugging Face folder (``config.json``,
``model.safetensors`` in float32, tokenizer files) plus ``card.json`` and ``CARD.md``.

    from mechscope.zoo.pycode import PycodeRecipe, train
    card = train(Path("weights/pycode"), PycodeRecipe())
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
import transformers
from tqdm.auto import tqdm
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from mechscope.errors import MechscopeError
from mechscope.zoo import pycode_data

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PycodeRecipe:
    """Everything that determines the trained `zoo:pycode` weights."""

    seed: int = 0
    """Seeds weight init, the order of training sequences and span repetition."""
    include_tests: bool = False
    """Train on the stdlib's test suites too (``test/``, ``tests/``, ``idle_test/``)."""
    heldout_fraction: float = 0.05
    """Fraction of files (chosen by a hash of the relative path) held out for evaluation."""
    max_files: int | None = None
    """Use only the first N train files (and N//4 held-out files) in path order; for tests."""
    vocab_size: int = 4096
    """Byte-level BPE vocabulary size, ``<|endoftext|>`` (id 0) included."""
    d_model: int = 256
    """Width of the residual stream."""
    n_layers: int = 4
    """Number of transformer blocks."""
    n_heads: int = 4
    """Attention (query) heads per block; ``d_head = d_model / n_heads``."""
    n_kv_heads: int = 2
    """Key/value heads per block (grouped-query attention when fewer than ``n_heads``)."""
    d_mlp: int = 704
    """Hidden width of the SwiGLU MLP."""
    context: int = 256
    """Training sequence length in tokens (also ``max_position_embeddings``)."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding."""
    batch_size: int = 16
    """Sequences per optimizer step."""
    steps: int = 1100
    """Optimizer steps in total."""
    lr: float = 2e-3
    """Peak learning rate of AdamW."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr`` at the end of the cosine decay."""
    warmup_steps: int = 50
    """Steps of linear learning-rate warmup from 0."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to matrices only (not norms)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init (``initializer_range``)."""
    repeat_fraction: float = 0.0
    """Fraction of training sequences whose second half repeats their first half."""
    eval_sequences: int = 256
    """Sequences (of ``context`` tokens) used for the held-out and train-split losses."""
    eval_every: int = 100
    """Measure the copying (induction) losses every this many steps, for the card."""
    checkpoint_every_s: float = 180.0
    """Seconds between checkpoints; does not affect the weights."""


# --------------------------------------------------------------------------- data order


def chunks_of(stream: torch.Tensor, context: int) -> torch.Tensor:
    """Non-overlapping windows of ``context + 1`` tokens (inputs plus next-token targets)."""
    n = (len(stream) - 1) // context
    if n < 1:
        raise MechscopeError(f"corpus too small: {len(stream)} tokens for context {context}")
    return stream[: n * context + 1].unfold(0, context + 1, context)


@functools.lru_cache(maxsize=4)
def _perm(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the chunks in one epoch: a pure function of (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_for_step(chunks: torch.Tensor, step: int, recipe: PycodeRecipe) -> torch.Tensor:
    """The training batch of ``step`` [batch, context + 1]: a pure function of the step.

    Each epoch visits every chunk once in a seeded order; resuming needs only the step.
    """
    n, b = len(chunks), recipe.batch_size
    idx = []
    for i in range(step * b, (step + 1) * b):
        idx.append(_perm(n, recipe.seed, i // n)[i % n])
    batch = chunks[torch.stack(idx)].long()
    if recipe.repeat_fraction > 0:
        g = torch.Generator().manual_seed(recipe.seed * 7_919 + step)
        rows = torch.rand(b, generator=g) < recipe.repeat_fraction
        half = (batch.shape[1] + 1) // 2
        repeated = torch.cat([batch[:, :half], batch[:, : batch.shape[1] - half]], dim=1)
        batch = torch.where(rows[:, None], repeated, batch)
    return batch


def lr_at(step: int, recipe: PycodeRecipe) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    span = max(1, recipe.steps - recipe.warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - recipe.warmup_steps) / span)))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cos)
