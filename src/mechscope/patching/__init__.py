"""Activation patching and its relatives: which parts of a model carry the difference
between a clean and a corrupted prompt.

- `Task` (clean / corrupt token ids, answers, foils) and metrics (`logit_diff`,
  `answer_prob`, `answer_logit`, `cross_entropy`, `kl_to_clean`; any callable of the logits).
"""

from .metrics import Metric, answer_logit, answer_prob, as_metric, by_name, cross_entropy, kl_to_clean, logit_diff
from .task import Task

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
]
