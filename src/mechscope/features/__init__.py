"""The feature store: what every latent of a dictionary does on a corpus, built in one
streaming pass and queried by the dashboard (`mechscope serve`) and from Python.

    store = ms.features.build(model, "runs/sae", "corpus/*.txt", "runs/store", tokens=2**20)
    store = ms.features.open("runs/store")
    f = store.feature(12)      # top contexts (per-token activations), samples, histogram,
                               # logit effects, decoder neighbours, co-occurring latents
    store.search(token=" def", sort="density")

- `build` (`BuildConfig`): streaming, bounded memory, resumable after a kill, incremental
  (building into a store with a new corpus adds it); SAEs, transcoders and crosscoders.
  Under `torchrun` the ranks share the batches and rank 0 writes a store equal, bit for bit,
  to a one-process build (`merge`).
- Storage: a folder with store.sqlite (WAL; metadata, examples, vocabulary; schema
  versioned), arrays.safetensors (dense per-latent arrays) and state.safetensors (the build's
  mergeable state).
- `export_neuronpedia(store, out)`: the Neuronpedia feature JSON layout.
"""

from .accumulate import Accumulator, bin_edges
from .build import build, dictionary_identity
from .config import BuildConfig
from .neuronpedia import export_neuronpedia, neuronpedia_feature
from .reader import LatentReader
from .schema import SCHEMA_VERSION
from .store import Example, Feature, FeatureStore, Page, open_store, set_explanations

open = open_store  # noqa: A001  (ms.features.open(path), as the issue names it)

__all__ = [
    "Accumulator",
    "BuildConfig",
    "Example",
    "Feature",
    "FeatureStore",
    "LatentReader",
    "Page",
    "SCHEMA_VERSION",
    "bin_edges",
    "build",
    "dictionary_identity",
    "export_neuronpedia",
    "neuronpedia_feature",
    "open",
    "open_store",
    "set_explanations",
]
