"""Circuit discovery: which edges between heads, MLPs, embeddings and logits carry a task.

- `Graph`: senders (embed, heads, MLPs) and receivers (each head's q / k / v input, one
  per KV head under grouped-query attention; MLP inputs; logits) of a model.
- `EdgePatcher`: run the model with chosen edges carrying corrupted / mean / zero outputs.
"""

from .graph import Graph
from .edges import ABLATIONS, EdgePatcher

__all__ = ["Graph", "EdgePatcher", "ABLATIONS"]
