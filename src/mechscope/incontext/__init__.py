"""In-context behaviour as vectors and maps.

- `Task` (input/output pairs + `Template`), `load_task` (JSONL / CSV), `builtin_tasks`,
  `get_task`; `icl_prompts`, `zero_shot_prompts`, `accuracy` (first-token scoring).
- Function vectors (Todd et al. 2024): `function_vector(model, task)` ->
  `FunctionVectorResult` (indirect effects per head, chosen heads, insertion layer,
  accuracies, prompt compression); the applied `FunctionVector` adds itself as an edit.
  `screen` keeps a task when k-shot beats zero-shot; `indirect_effects`,
  `mean_head_outputs`, `vector_from_heads` are the steps.
- Linear relational embeddings (Hernandez et al. 2023): `relation(model, prompts, subjects,
  subject_site, object_site)` -> `RelationResult` (faithfulness, causality, β and rank
  sweeps); the applied `LinearRelation`; `jacobians` (batched) is the step.
"""

from .function_vector import FunctionVector, FunctionVectorResult, function_vector, resid_site, screen
from .heads import indirect_effects, mean_head_outputs, top_heads, vector_from_heads
from .jacobians import Encoded, encode_samples, jacobians
from .prompts import Prompts, accuracy, icl_prompts, zero_shot_prompts
from .relation import LinearRelation, RelationResult, relation
from .tasks import Task, Template, builtin_tasks, get_task, load_task

__all__ = [
    "Task",
    "Template",
    "load_task",
    "builtin_tasks",
    "get_task",
    "Prompts",
    "icl_prompts",
    "zero_shot_prompts",
    "accuracy",
    "function_vector",
    "FunctionVector",
    "FunctionVectorResult",
    "resid_site",
    "screen",
    "indirect_effects",
    "mean_head_outputs",
    "top_heads",
    "vector_from_heads",
    "relation",
    "RelationResult",
    "LinearRelation",
    "jacobians",
    "encode_samples",
    "Encoded",
]
