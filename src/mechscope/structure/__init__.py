"""Structure of a model: attention patterns as graphs, and the spectra of its weights.

from mechscope import structure

graphs = structure.attention_graphs(model, prompts, heads="0.1,1.3", threshold=0.1)
g = graphs.get(0, 1)                      # one head on the first prompt
g.stats().to_records()                    # density, clustering, paths, degrees vs Erdős–Rényi
g.spectrum().elbow                        # profile-likelihood elbow of the attention matrix
g.embedding().plot(); g.plot()            # Laplacian eigenmap; arc diagram on the tokens
graphs.compare((0, 1), (1, 3)).p_value    # permutation test: same distribution of graphs?

spectra = structure.weight_spectra(model)          # every matrix and OV/QK circuit
spectra.by_layer("OV", "effective_rank")           # [layer, head]
diff = structure.weight_diff(base, finetuned)      # is the update low-rank, and where?
diff.row("blocks.0.mlp.W_in")["rank"], diff.directions("blocks.0.mlp.W_in")
found = structure.edit_forensics(base, edited, candidates=names)   # which matrix, rank, subject, object
found.changed(), found.readings["blocks.1.mlp.W_out"]["keys"][0]
lora = structure.lora_forensics(base, "adapter_dir")                 # rank usage, intruder dimensions
"""

from .edit_reading import KEY_SITES, TEMPLATES
from .embedding import Communities, Embedding, adjacency_spectrum, communities, laplacian_spectrum, spectral_embedding
from .forensics import MATRIX_KINDS, EditForensics, edit_forensics
from .graph_stats import STAT_NAMES, GraphStats, compare_with_er, er_expected, graph_statistics
from .graphs import AttentionGraphs, HeadGraph, attention_graphs, parse_heads
from .lora import LoraAdapter, LoraForensics, LoraModule, lora_forensics, read_adapter
from .lowrank import LowRankSVD, lowrank_svd
from .scree import Scree, elbow, profile_likelihood
from .spectra import (
    KINDS,
    STATS,
    WeightSpectra,
    effective_rank,
    factored_svd,
    singular_values,
    spectral_entropy,
    spectrum_stats,
    stable_rank,
    top_k_share,
    weight_matrices,
    weight_spectra,
)
from .twosample import TwoSampleTest, two_sample_test
from .weight_diff import WeightDiff, principal_angles, weight_diff

__all__ = [
    "attention_graphs",
    "AttentionGraphs",
    "HeadGraph",
    "parse_heads",
    "graph_statistics",
    "compare_with_er",
    "er_expected",
    "GraphStats",
    "STAT_NAMES",
    "adjacency_spectrum",
    "laplacian_spectrum",
    "spectral_embedding",
    "Embedding",
    "communities",
    "Communities",
    "profile_likelihood",
    "elbow",
    "Scree",
    "two_sample_test",
    "TwoSampleTest",
    "weight_spectra",
    "WeightSpectra",
    "weight_matrices",
    "singular_values",
    "factored_svd",
    "spectrum_stats",
    "spectral_entropy",
    "effective_rank",
    "stable_rank",
    "top_k_share",
    "KINDS",
    "STATS",
    "weight_diff",
    "WeightDiff",
    "principal_angles",
    "edit_forensics",
    "EditForensics",
    "MATRIX_KINDS",
    "KEY_SITES",
    "TEMPLATES",
    "lowrank_svd",
    "LowRankSVD",
    "lora_forensics",
    "LoraForensics",
    "read_adapter",
    "LoraAdapter",
    "LoraModule",
]
