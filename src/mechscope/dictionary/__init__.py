"""Sparse dictionaries (SAEs) on model activations.

- `CoderConfig`, `build(cfg)`, `SparseCoder` (+ `CoderOutput`): seven architectures —
  relu, topk, batchtopk, gated, jumprelu, matryoshka, switch — one file each.
- `SparseCoder.save(folder)` / `load(folder)`: mechscope layout (cfg.json + sae.safetensors).
"""

from .base import CoderOutput, SparseCoder, build
from .config import ARCHITECTURES, CoderConfig
from .median import geometric_median, mean_norm_scale
from .topk import TopKSAE

load = SparseCoder.load

__all__ = [
    "CoderConfig", "CoderOutput", "SparseCoder", "build", "load", "ARCHITECTURES",
    "TopKSAE", "geometric_median", "mean_norm_scale",
    # --- S2 exports (source, cache, train, evaluate): the lead fills this block ---
    # --- end S2 exports ---
]
