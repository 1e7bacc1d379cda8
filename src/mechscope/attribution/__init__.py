"""Attributing outputs to the parts of the model that wrote them.

- `direct_logit_attribution(model, prompts, target, vs=None, ...) -> DirectLogitAttribution`:
  the final residual stream split into embeddings, heads, attention biases, MLPs and the
  head's biases, each projected on a logit (difference) with the final norm frozen.
"""

from .dla import DirectLogitAttribution, direct_logit_attribution

__all__ = ["direct_logit_attribution", "DirectLogitAttribution"]
