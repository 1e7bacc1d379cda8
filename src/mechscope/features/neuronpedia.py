"""Export to the Neuronpedia dashboard JSON layout (the batches SAEDashboard's runner writes:
{model_id, layer, sae_set, features: [...]}), so a store's features can be uploaded there.

Per feature: `pos_str`/`pos_values` and `neg_str`/`neg_values` (logit effects),
`frac_nonzero` (density), `freq_hist_data_bar_heights`/`_values` (the histogram: heights and
bin centres, equal lengths), and `activations`: the top examples (bin "top") and the samples,
each with `tokens` and `values` of equal length. Fields the store does not compute
(neuron alignment, correlations, logit histograms) are left empty, as Neuronpedia allows."""

from __future__ import annotations

import math
import re
from pathlib import Path

from .. import io
from .store import FeatureStore

BATCH = 128
"""Features per JSON file."""


def _layer(hook_name: str) -> int:
    found = re.search(r"blocks\.(\d+)\.", hook_name or "")
    return int(found.group(1)) if found else 0


def neuronpedia_feature(store: FeatureStore, latent: int) -> dict:
    """One feature in Neuronpedia's layout."""
    f = store.feature(latent)
    edges = f.histogram["edges"]
    centres = [math.sqrt(a * b) for a, b in zip(edges[:-1], edges[1:])]
    activations = [
        {
            "bin_min": e.value,
            "bin_max": f.max,
            "bin_contains": 1.0,
            "tokens": e.tokens,
            "values": e.acts
            if e.acts is not None
            else [e.value if j == e.centre else 0.0 for j in range(len(e.tokens))],
        }
        for e in f.top
    ]
    for e in f.samples:
        activations.append(
            {
                "bin_min": e.value,
                "bin_max": e.value,
                "bin_contains": 0.0,
                "tokens": e.tokens,
                "values": [e.value if j == e.centre else 0.0 for j in range(len(e.tokens))],
            }
        )
    return {
        "feature_index": latent,
        "neuron_alignment_indices": [],
        "neuron_alignment_values": [],
        "neuron_alignment_l1": [],
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [i for i, _ in f.co_occurring],
        "correlated_features_l1": [],
        "correlated_features_pearson": [],
        "neg_str": [t for t, _ in f.logits_down],
        "neg_values": [v for _, v in f.logits_down],
        "pos_str": [t for t, _ in f.logits_up],
        "pos_values": [v for _, v in f.logits_up],
        "frac_nonzero": f.density,
        "freq_hist_data_bar_values": centres,
        "freq_hist_data_bar_heights": f.histogram["heights"],
        "logits_hist_data_bar_heights": [],
        "logits_hist_data_bar_values": [],
        "n_prompts_total": int(store.meta["n_tokens"]) // int(store.cfg["ctx_len"]),
        "n_tokens_in_prompt": int(store.cfg["ctx_len"]),
        "dataset": "",
        "decoder_weights_dist": [],
        "activations": activations,
    }


def export_neuronpedia(
    store: FeatureStore | str | Path, out: str | Path, *, model_id: str | None = None, sae_set: str = "mechscope"
) -> list[Path]:
    """Write batch-N.json files (BATCH features each) into `out`; returns their paths."""
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    out = io.make_folder(out)
    models: dict[str, dict] = store.meta.get("models") or {}
    name = model_id or next(iter(models.values()), {}).get("name", "model")
    layer = _layer(store.meta["dictionary"].get("hook_name", ""))
    written = []
    for start in range(0, store.d_sae, BATCH):
        features = [neuronpedia_feature(store, i) for i in range(start, min(start + BATCH, store.d_sae))]
        batch = {"model_id": name, "layer": layer, "sae_set": sae_set, "features": features}
        written.append(io.write_json(out / f"batch-{start // BATCH}.json", batch))
    return written
