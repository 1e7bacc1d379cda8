"""Attention graphs: statistics against networkx and the Erdős–Rényi baseline, the
profile-likelihood elbow, the two-sample test's level and power, and the model path."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch

from mechscope import structure as st
from mechscope.errors import MechscopeError
from mechscope.structure.graph_stats import as_digraph, er_samples

from ..models.tiny import tiny_model


def networkx_statistics(a: np.ndarray) -> dict[str, float]:
    g = as_digraph(a)
    component = max(nx.weakly_connected_components(g), key=len)
    und = g.subgraph(component).to_undirected()
    indeg = np.array([d for _, d in g.in_degree()], float)
    outdeg = np.array([d for _, d in g.out_degree()], float)
    return {
        "density": nx.density(g),
        "clustering": nx.average_clustering(g),
        "mean_path": nx.average_shortest_path_length(und) if len(component) > 1 else math.nan,
        "mean_degree": outdeg.mean(),
        "in_degree_std": indeg.std(ddof=1),
        "out_degree_std": outdeg.std(ddof=1),
        "in_degree_max": indeg.max(),
        "out_degree_max": outdeg.max(),
    }


def known_graphs():
    rng = np.random.default_rng(3)
    star = np.zeros((8, 8), bool)
    star[1:, 0] = True  # every token attends to the first (an attention sink)
    cycle = np.roll(np.eye(6, dtype=bool), 1, axis=1)
    causal = np.tril(rng.random((12, 12)) < 0.4, -1)
    two_parts = np.zeros((9, 9), bool)
    two_parts[1:4, 0] = two_parts[5:, 4] = True
    return {
        "complete": ~np.eye(5, dtype=bool),
        "star": star,
        "cycle": cycle,
        "causal": causal,
        "two_parts": two_parts,
        "karate": nx.to_numpy_array(nx.karate_club_graph()) > 0,
    }


@pytest.mark.parametrize("name", list(known_graphs()))
def test_statistics_match_networkx(name):
    a = known_graphs()[name]
    ours, theirs = st.graph_statistics(a), networkx_statistics(a)
    for key in st.STAT_NAMES:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12, nan_ok=True), key


def test_er_expectations_match_sampled_networkx_graphs():
    n, p = 14, 0.2
    expected = st.er_expected(n, p)
    samples = []
    for seed in range(300):
        g = nx.gnp_random_graph(n, p, seed=seed, directed=True)
        samples.append(networkx_statistics(nx.to_numpy_array(g) > 0))
    mean = {k: np.nanmean([s[k] for s in samples]) for k in st.STAT_NAMES}
    assert mean["density"] == pytest.approx(expected["density"], rel=0.03)
    assert mean["clustering"] == pytest.approx(expected["clustering"], rel=0.06)
    assert mean["mean_degree"] == pytest.approx(expected["mean_degree"], rel=0.03)
    assert np.mean([s["in_degree_std"] ** 2 for s in samples]) == pytest.approx(
        expected["in_degree_std"] ** 2, rel=0.08
    )
    assert mean["in_degree_max"] == pytest.approx(expected["in_degree_max"], rel=0.05)
    assert mean["out_degree_max"] == pytest.approx(expected["out_degree_max"], rel=0.05)
    assert mean["mean_path"] == pytest.approx(expected["mean_path"], rel=0.1)  # mean-field approximation
    # our own sampler agrees with networkx's
    ours = er_samples(n, p, 300, seed=1)
    assert ours[:, 1].mean() == pytest.approx(mean["clustering"], rel=0.08)


def test_compare_with_er_flags_a_sink_not_a_random_graph():
    star = known_graphs()["star"]
    result = st.compare_with_er(star, n_null=200, seed=0)
    assert (
        result.observed["in_degree_max"] == 7
        and result.p_value["in_degree_max"] < 0.05
        and result.z("in_degree_max") > 3
    )
    rng = np.random.default_rng(0)
    random = st.compare_with_er(rng.random((20, 20)) < 0.3, n_null=200, seed=1)
    assert all(random.p_value[k] > 0.01 for k in ("clustering", "in_degree_max", "out_degree_std"))
    # the null: seeded G(n, p) graphs of the star's density, their statistics averaged
    seeded = st.compare_with_er(star, n_null=50, seed=4)
    p = star.sum() / (8 * 7)
    null = er_samples(8, p, 50, seed=4)
    for i, key in enumerate(st.STAT_NAMES):
        assert seeded.null_mean[key] == pytest.approx(float(np.nanmean(null[:, i])), abs=1e-12), key
    assert seeded.null_mean["density"] == pytest.approx(p, rel=0.15)  # 3 sigma of 50 graphs' mean density
    assert st.compare_with_er(star, n_null=50, seed=5).null_mean["clustering"] != seeded.null_mean["clustering"]


@pytest.mark.parametrize("rank", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elbow_recovers_planted_rank(rank, seed):
    rng = np.random.default_rng(seed)
    m, n = 60, 40
    u, _ = np.linalg.qr(rng.normal(size=(m, rank)))
    v, _ = np.linalg.qr(rng.normal(size=(n, rank)))
    signal = u @ np.diag(rng.uniform(25, 35, rank)) @ v.T
    values = np.linalg.svd(signal + rng.normal(size=(m, n)), compute_uv=False)
    assert st.elbow(values) == rank
    assert st.Scree.of(values, "singular values").elbow == rank


def test_profile_likelihood_needs_three_values():
    with pytest.raises(MechscopeError, match="at least 3 values"):
        st.profile_likelihood([2.0, 1.0])
    assert st.elbow([10.0, 9.5, 1.0, 0.9, 0.8]) == 2
    assert st.elbow([1.0, 0.0, 0.0, 0.0]) == 1 and st.elbow([0.0] * 5) >= 1  # perfect splits, no division by zero


def er_pool(p: float, count: int, n: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([[st.graph_statistics(rng.random((n, n)) < p)[k] for k in st.STAT_NAMES] for _ in range(count)])


def test_two_sample_false_positive_rate_is_near_nominal():
    pool = er_pool(0.25, 400, seed=0)
    rng = np.random.default_rng(1)
    rejections = 0
    for trial in range(200):
        chosen = rng.choice(len(pool), 20, replace=False)
        result = st.two_sample_test(
            pool[chosen[:10]], pool[chosen[10:]], names=st.STAT_NAMES, n_permutations=199, alpha=0.05, seed=trial
        )
        rejections += result.reject
    assert 0.01 <= rejections / 200 <= 0.10


def test_two_sample_has_power_and_pairs_by_stratum():
    a, b = er_pool(0.2, 10, seed=2), er_pool(0.4, 10, seed=3)
    result = st.two_sample_test(a, b, names=st.STAT_NAMES, n_permutations=499, seed=0)
    assert result.reject and result.p_value < 0.01
    strata = np.arange(10)
    paired = st.two_sample_test(a, b, strata_a=strata, strata_b=strata, names=st.STAT_NAMES, n_permutations=499)
    assert paired.stratified and paired.reject and paired.p_value < 0.02


def test_two_sample_bad_input():
    with pytest.raises(MechscopeError, match="features"):
        st.two_sample_test(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(MechscopeError, match="no usable statistic"):
        st.two_sample_test(np.ones((3, 2)), np.ones((3, 2)))


def test_communities_and_laplacian_elbow_find_planted_blocks():
    w = np.full((10, 10), 0.01)
    w[:5, :5] = w[5:, 5:] = 0.3
    tokens = [str(i) for i in range(10)]
    parts = st.communities(w, tokens, seed=0)
    assert parts.groups == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]] and parts.modularity > 0.3
    assert st.laplacian_spectrum(w).elbow == 2
    coords = np.array(st.spectral_embedding(w, tokens, dim=1).coords)[:, 0]
    assert np.sign(coords[:5]).tolist() == [np.sign(coords[0])] * 5 and np.all(
        np.sign(coords[5:]) == -np.sign(coords[0])
    )


@pytest.fixture(scope="module")
def graphs():
    model = tiny_model("llama")  # grouped-query attention (2 kv heads for 4 heads)
    ids = torch.randint(3, 97, (4, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return st.attention_graphs(model, ids, attention_mask=mask, heads="0.1,1.2", threshold=0.05)


def test_graphs_from_a_model_drop_padding(graphs):
    assert graphs.heads == [(0, 1), (1, 2)] and len(graphs.graphs) == 8 and graphs.n_prompts == 4
    padded = graphs.get(0, 1, prompt=1)
    assert padded.weights.shape == (9, 9) and len(padded.tokens) == 9
    assert torch.allclose(padded.weights.sum(-1), torch.ones(9), atol=1e-5)
    a = padded.adjacency()
    assert not a.diagonal().any() and not np.triu(a, 1).any()  # causal: edges only point backwards
    g = padded.to_networkx()
    assert g.number_of_edges() == a.sum() and all(d["weight"] > 0.05 for *_, d in g.edges(data=True))


def test_graph_results_plot_save_and_load(graphs, tmp_path):
    g = graphs.get(1, 2)
    stats, scree, embedding = g.stats(n_null=20), g.spectrum(), g.embedding()
    assert len(stats.to_records()) == len(st.STAT_NAMES) and 1 <= scree.elbow < 12
    assert np.array(embedding.coords).shape == (12, 2)
    for fig in (g.plot(), stats.plot(), scree.plot(), embedding.plot(), graphs.plot()):
        assert fig.axes
    row = graphs.summary(n_null=10)[0]
    assert {"layer", "head", "clustering_z", "elbow", "communities"} <= set(row)
    graphs.save(tmp_path / "graphs")
    again = st.AttentionGraphs.load(tmp_path / "graphs")
    assert torch.equal(again.get(0, 1, 1).weights, graphs.get(0, 1, 1).weights) and again.heads == graphs.heads
    stats.save(tmp_path / "stats.json")
    assert st.GraphStats.load(tmp_path / "stats.json").observed == stats.observed
    scree.save(tmp_path / "scree.json")
    assert st.Scree.load(tmp_path / "scree.json").elbow == scree.elbow
    test = graphs.compare((0, 1), "1.2", n_permutations=99)
    test.save(tmp_path / "test.json")
    assert st.TwoSampleTest.load(tmp_path / "test.json").p_value == test.p_value and test.stratified
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graphs", "scree.json", "stats.json", "test.json"]


def test_bad_heads_and_thresholds():
    model = tiny_model("mistral")
    with pytest.raises(MechscopeError, match=r"unknown head 2\.0: this model has 2 layers \(0-1\)"):
        st.attention_graphs(model, torch.arange(5), heads=[(2, 0)])
    with pytest.raises(MechscopeError, match=r"unknown head 0\.4"):
        st.attention_graphs(model, torch.arange(5), heads="0.4")
    with pytest.raises(MechscopeError, match="bad head 'x'"):
        st.attention_graphs(model, torch.arange(5), heads="x")
    with pytest.raises(MechscopeError, match="threshold"):
        st.attention_graphs(model, torch.arange(5), threshold=1.5)
    graphs = st.attention_graphs(model, torch.arange(5), heads="1.3")
    with pytest.raises(MechscopeError, match="no graph for head 0.0"):
        graphs.get(0, 0)
    with pytest.raises(MechscopeError, match="unknown spectrum kind"):
        graphs.get(1, 3).spectrum("eigen")
