"""Circuit discovery: which edges between heads, MLPs, embeddings and logits carry a task.

- `Graph`: senders (embed, heads, MLPs) and receivers (each head's q / k / v input, one
  per KV head under grouped-query attention; MLP inputs; logits) of a model.
- `EdgePatcher`: run the model with chosen edges carrying corrupted / mean / zero outputs.
- `eap(model, task)`, `eap_ig(model, task, steps=5)`: a score for every edge from one
  (or `steps`) forward + backward; `.circuit(top=N)` cuts a circuit out.
- `acdc(model, task, threshold=...)`: greedy pruning with exact edge patching.
- `Circuit`: edges with scores, `faithfulness`, `top`, `to_json` / `to_dot` / `plot`,
  `save` / `load`.
- `induction_task(...)`: a repeated-random-tokens clean / corrupt task for induction.
"""

from .circuit import Circuit
from .discovery import METHODS, acdc, discover, eap, eap_ig, resolve_metric
from .edges import ABLATIONS, EdgePatcher
from .graph import Graph
from .tasks import induction_task

__all__ = [
    "Graph",
    "EdgePatcher",
    "ABLATIONS",
    "Circuit",
    "METHODS",
    "acdc",
    "eap",
    "eap_ig",
    "discover",
    "resolve_metric",
    "induction_task",
]
