"""Activation patching and its relatives: which parts of a model carry the difference
between a clean and a corrupted prompt.

- `Task` (clean / corrupt token ids, answers, foils) and metrics (`logit_diff`,
  `answer_prob`, `answer_logit`, `cross_entropy`, `kl_to_clean`; any callable of the logits).
- `sweep(model, task, metric, sweep="resid"|"attn"|"mlp"|"heads"|"heads-pos", direction=...)`
  -> `PatchResult`: exact activation patching, many patches per forward along the batch.
- `patch(model, task, metric, [Patch(site, position, head), ...])`: several patched at once.
- `attribution_sweep(...)` -> `PatchResult`: first-order estimate from one forward+backward;
  `agreement(exact, approx)` -> Pearson r and sign agreement.
- `causal_trace(model, prompt, subject)` -> `TraceResult` (ROME): noise the subject's
  embeddings, restore single states / windows, read the clean answer's probability.
- `path_patch(model, task, metric, senders, receivers)` -> `PathEffect` (Wang et al. 2022).
- `ablate(model, task, metric, site, how="zero"|"mean"|"resample")` -> `Ablation`.
"""

from .ablate import Ablation, ablate, ablation_edit
from .attribution import Agreement, agreement, attribution_sweep, site_gradients
from .metrics import Metric, answer_logit, answer_prob, as_metric, by_name, cross_entropy, kl_to_clean, logit_diff
from .paths import PathEffect, path_patch
from .result import PatchResult
from .sweep import SWEEPS, Patch, patch, sweep
from .task import Task
from .tracing import TraceResult, causal_trace, subject_positions

__all__ = [
    "Task",
    "Metric",
    "as_metric",
    "by_name",
    "logit_diff",
    "answer_prob",
    "answer_logit",
    "cross_entropy",
    "kl_to_clean",
    "sweep",
    "patch",
    "Patch",
    "SWEEPS",
    "PatchResult",
    "attribution_sweep",
    "site_gradients",
    "agreement",
    "Agreement",
    "causal_trace",
    "TraceResult",
    "subject_positions",
    "path_patch",
    "PathEffect",
    "ablate",
    "ablation_edit",
    "Ablation",
]
