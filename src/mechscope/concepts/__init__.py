"""Concepts in activations: labelled activations, probes with control tasks, a calibrated
"is the model right?" probe, and LEACE concept erasure inside the model.

- `collect(model, texts, labels, sites) -> Labelled` (in memory, or `folder=` for the
  dictionaries' on-disk cache; `read_collected(folder)`); labels from `read_table` (CSV/JSONL
  column), `token_function(fn)`, or `python_token_kinds` (Python `tokenize` kinds per BPE token);
  `from_tensors(acts, labels)` for activations you already have.
- `probe(data, site, kind="logistic"|"linear"|"mlp1") -> Probe` (held-out split by text,
  L2 by cross-validation; `Probe.save/load`, `Probe.direction()` for steering);
  `probe_layers(data) -> ProbeSweep` with control tasks and selectivity per site.
- `auroc`, `brier`, `ece`, `reliability` (15 equal-width bins).
- `train_confidence(model, texts) -> ConfidenceProbe`; `score(model, conf, prompts)`:
  calibrated P(right) per position; `answer_correctness` for question/answer prompts.
- `fit_eraser(model, texts, labels, sites) -> Eraser` (LEACE via `concept-erasure`, sites
  fitted in forward order on erased upstream activations; `Eraser.edits()`), `fit_on(data)`,
  `erasure_cost(model, eraser, texts, labels)`, `lm_loss`.
"""

from .calibration import CALIBRATIONS, apply_calibrator, fit_calibrator
from .collect import collect, prepare, read_collected
from .confidence import ConfidenceProbe, Scores, fit_confidence, score, score_run, train_confidence
from .correctness import Correctness, answer_correctness, next_token_correctness
from .cost import erasure_cost, lm_loss
from .erasure import Eraser, fit_eraser, fit_on
from .heads import ProbeConfig
from .labelled import Labelled, from_tensors
from .labels import KINDS, TextTokens, python_token_kinds, read_table, token_function
from .metrics import Reliability, auroc, brier, ece, reliability
from .probe import Probe, probe
from .sweep import ProbeSweep, control_labels, probe_layers

__all__ = [
    "collect",
    "prepare",
    "read_collected",
    "Labelled",
    "from_tensors",
    "TextTokens",
    "KINDS",
    "python_token_kinds",
    "read_table",
    "token_function",
    "ProbeConfig",
    "Probe",
    "probe",
    "ProbeSweep",
    "probe_layers",
    "control_labels",
    "auroc",
    "brier",
    "ece",
    "reliability",
    "Reliability",
    "CALIBRATIONS",
    "fit_calibrator",
    "apply_calibrator",
    "Correctness",
    "next_token_correctness",
    "answer_correctness",
    "ConfidenceProbe",
    "fit_confidence",
    "train_confidence",
    "Scores",
    "score",
    "score_run",
    "Eraser",
    "fit_eraser",
    "fit_on",
    "erasure_cost",
    "lm_loss",
]
