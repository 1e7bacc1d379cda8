"""Sparse dictionaries (SAEs) on model activations.

- `CoderConfig`, `build(cfg)`, `SparseCoder` (+ `CoderOutput`): seven architectures, one
  file each — relu, topk, batchtopk, gated, jumprelu, matryoshka, switch.
- `SparseCoder.save(folder)` / `load(folder)`: mechscope layout (cfg.json + sae.safetensors).
- `read(folder)`: any layout (mechscope, SAELens, sparsify); `write_saelens`, `convert`.
- `attach(model, coder, site, replace=, keep_error=)`: latents on the fly, reconstructions
  spliced into the forward; `feature_acts`, `top_contexts`, `logit_effect`, `direction`.
"""

from .attach import Attached, attach
from .base import CoderOutput, SparseCoder, build
from .batchtopk import BatchTopKSAE
from .config import ARCHITECTURES, CoderConfig
from .features import (
    LogitEffect,
    TopContexts,
    direction,
    feature_acts,
    logit_effect,
    top_contexts,
)
from .formats import convert, detect, read, read_saelens, read_sparsify, write_saelens
from .gated import GatedSAE
from .jumprelu import JumpReluSAE
from .matryoshka import MatryoshkaSAE
from .median import geometric_median, mean_norm_scale
from .relu import ReluSAE
from .switch import SwitchSAE
from .topk import TopKSAE

load = SparseCoder.load

__all__ = [
    "ARCHITECTURES",
    "Attached",
    "BatchTopKSAE",
    "CoderConfig",
    "CoderOutput",
    "GatedSAE",
    "JumpReluSAE",
    "LogitEffect",
    "MatryoshkaSAE",
    "ReluSAE",
    "SparseCoder",
    "SwitchSAE",
    "TopContexts",
    "TopKSAE",
    "attach",
    "build",
    "convert",
    "detect",
    "direction",
    "feature_acts",
    "geometric_median",
    "load",
    "logit_effect",
    "mean_norm_scale",
    "read",
    "read_saelens",
    "read_sparsify",
    "top_contexts",
    "write_saelens",
    # --- S2 exports (source, cache, train, evaluate): the lead fills this block ---
    # --- end S2 exports ---
]
