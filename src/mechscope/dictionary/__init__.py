"""Sparse dictionaries (SAEs) on model activations.

- `CoderConfig`, `build(cfg)`, `SparseCoder` (+ `CoderOutput`): seven architectures, one
  file each — relu, topk, batchtopk, gated, jumprelu, matryoshka, switch.
- `SparseCoder.save(folder)` / `load(folder)`: mechscope layout (cfg.json + sae.safetensors).
- `read(folder)`: any layout (mechscope, SAELens, sparsify); `write_saelens`, `convert`.
- `attach(model, coder, site, replace=, keep_error=)`: latents on the fly, reconstructions
  spliced into the forward; `feature_acts`, `top_contexts`, `logit_effect`, `direction`.
- `SourceConfig` / `ActivationSource` (activations from a model over a local corpus),
  `write_cache` / `CacheReader` (sharded on-disk cache; `ShardStream` streams one larger
  than memory), `TrainConfig` / `train` /
  `train_from_cache` / `Trainer` (resumable, DDP), `evaluate` -> `DictionaryEvaluation`.
- Transcoders (`CoderConfig(d_out=, target_hook=, skip=)`, `transcoder_config`, `splice`),
  meta-SAEs (`train_meta` -> `MetaSAE`), SAE error analysis (`error_analysis`).
- Crosscoders (`Crosscoder`, `WeaklyCausalCrosscoder`): one dictionary over several sites or
  two models (`StackedSource`, `train_crosscoder`); model diffing (`diff` -> `ModelDiff`).
"""

from .attach import Attached, attach
from .base import CoderOutput, SparseCoder, build
from .batchtopk import BatchTopKSAE
from .cache import CacheReader, write_cache
from .config import ARCHITECTURES, CROSSCODERS, INPUT_NORMS, CoderConfig
from .crosscoder import Crosscoder, WeaklyCausalCrosscoder, block_metrics
from .diffing import ModelDiff, diff, exclusive_contexts, relative_norms, stacked_activations
from .error import ErrorAnalysis, error_analysis, linear_predictability
from .evaluate import DictionaryEvaluation, evaluate
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
from .meta import MetaSAE, RowStream, train_meta
from .relu import ReluSAE
from .source import ActivationSource, SourceConfig
from .stacked import StackedSource, crosscoder_config, diff_source, layer_source, train_crosscoder
from .streaming import ShardStream
from .switch import SwitchSAE
from .topk import TopKSAE
from .train import Trainer, train, train_from_cache
from .trainer_config import TrainConfig
from .transcoder import mlp_sites, splice, transcoder_config

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
    "ActivationSource",
    "CROSSCODERS",
    "INPUT_NORMS",
    "Crosscoder",
    "WeaklyCausalCrosscoder",
    "block_metrics",
    "ModelDiff",
    "diff",
    "exclusive_contexts",
    "relative_norms",
    "stacked_activations",
    "StackedSource",
    "crosscoder_config",
    "diff_source",
    "layer_source",
    "train_crosscoder",
    "ErrorAnalysis",
    "error_analysis",
    "linear_predictability",
    "MetaSAE",
    "RowStream",
    "train_meta",
    "mlp_sites",
    "splice",
    "transcoder_config",
    "CacheReader",
    "ShardStream",
    "DictionaryEvaluation",
    "SourceConfig",
    "TrainConfig",
    "Trainer",
    "evaluate",
    "train",
    "train_from_cache",
    "write_cache",
]
