"""Reading the model's residual stream in the output vocabulary.

- `logit_lens(model, prompts, ...) -> LogitLens`: every layer's prediction (top-k, target
  probabilities and ranks, entropy, KL to the output) through the model's own final
  norm and unembedding, or through a `translator` such as a tuned lens.
- `token_energy(model, prompts, ...) -> TokenEnergy`, `token_space(model, ...) -> TokenSpace`:
  how much of each latent lies in the span of the output-token embeddings.
- `latent_language(model, prompts, answers, ...) -> LatentLanguage`: per-layer probability
  mass of the answer in each language, with confidence bands.

A `Translator` is any callable `translator(resid, index) -> resid` (see `_common.Translator`
for the index convention).
"""

from ._common import Translator
from .energy import TokenEnergy, TokenSpace, effective_unembedding, token_energy, token_space
from .language import LatentLanguage, latent_language
from .logit import LogitLens, logit_lens
from .tuned import LensEvaluation, TunedLens, TunedLensConfig, TunedLensTrainer
from .tuned import evaluate as evaluate_tuned_lens
from .tuned import train as train_tuned_lens

__all__ = [
    "logit_lens",
    "LogitLens",
    "token_energy",
    "token_space",
    "TokenEnergy",
    "TokenSpace",
    "effective_unembedding",
    "latent_language",
    "LatentLanguage",
    "Translator",
    "TunedLens",
    "TunedLensConfig",
    "TunedLensTrainer",
    "LensEvaluation",
    "train_tuned_lens",
    "evaluate_tuned_lens",
]
