"""Steering: act on what the model represents.

- `SteeringVector` (the artefact: a direction per site, with layer, activation norm and
  provenance; `+`, `-`, `*`, `normalized`, `save`/`load`) and `compose([(v1, a), (v2, b)])`.
- `contrast(model, pairs, sites, read=, method=)` with the `Contrast` fitter; pairs from
  lists, CSV/JSONL/JSON files and CAA's A/B format (`read_pairs`, `caa_pair`).
- Applying: `steered(model, (v, s, where), ...)`, `generate`, `vector_edits` (per-row
  strengths as a [batch] tensor), where = "all" | "prompt" | "generated".
"""

from .apply import WHERE, generate, steered, term_edits, vector_edits
from .contrast import METHODS, Contrast, contrast
from .pairs import caa_pair, caa_pairs, read_pairs
from .vector import SteeringVector, compose

__all__ = [
    "METHODS",
    "WHERE",
    "Contrast",
    "SteeringVector",
    "caa_pair",
    "caa_pairs",
    "compose",
    "contrast",
    "generate",
    "read_pairs",
    "steered",
    "term_edits",
    "vector_edits",
]
