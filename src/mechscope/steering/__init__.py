"""Steering: act on what the model represents.

- `SteeringVector` (the artefact: a direction per site, with layer, activation norm and
  provenance; `+`, `-`, `*`, `normalized`, `save`/`load`) and `compose([(v1, a), (v2, b)])`.
- `contrast(model, pairs, sites, read=, method=)` with the `Contrast` fitter; pairs from
  lists, CSV/JSONL/JSON files and CAA's A/B format (`read_pairs`, `caa_pair`).
- Applying: `steered(model, (v, s, where), ...)`, `generate`, `vector_edits` (per-row
  strengths as a [batch] tensor), where = "all" | "prompt" | "generated".
- Dictionaries: `from_feature(sae, latent)` (the decoder row), `clamp(sae, {latent: value})`
  (an edit that keeps the SAE's error, so clamping to the own value changes nothing).
- `search(model, vector_or_pairs, ...)` -> `SearchResult`: layer x strength, batched, with
  behaviour, fluency cost, anti-steerable fraction, Pareto front, recommended cell, plots.
- Interchange: `export_gguf` / `import_gguf` (llama.cpp control vectors), `from_steering_vectors`,
  `from_repeng`.
"""

from .apply import WHERE, generate, steered, term_edits, vector_edits
from .clamp import Clamp, clamp, from_feature
from .contrast import METHODS, Contrast, contrast
from .interchange import export_gguf, from_repeng, from_steering_vectors, import_gguf
from .pairs import caa_pair, caa_pairs, read_pairs
from .search import search
from .search_result import SearchResult
from .vector import SteeringVector, compose

__all__ = [
    "METHODS",
    "WHERE",
    "Clamp",
    "Contrast",
    "SearchResult",
    "SteeringVector",
    "caa_pair",
    "caa_pairs",
    "clamp",
    "compose",
    "contrast",
    "export_gguf",
    "from_feature",
    "from_repeng",
    "from_steering_vectors",
    "generate",
    "import_gguf",
    "read_pairs",
    "search",
    "steered",
    "term_edits",
    "vector_edits",
]
