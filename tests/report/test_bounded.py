"""The report's cost is bounded on long prompts: attention graphs (and their statistics,
communities and diagrams) on a window of the last positions, the predictions table on the
last rows, per-position figures of bounded width; each bound is stated on the page.
Caps are lowered here so a 40-token prompt of a tiny model triggers them."""

from __future__ import annotations

import re

import pytest
import torch

from mechscope import structure as st
from mechscope.report import sections
from mechscope.report import structure as report_structure
from mechscope.structure import graphs as graphs_module

from ..models.tiny import tiny_model

N_TOKENS, WINDOW, ROWS = 40, 16, 8


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2")


@pytest.fixture(scope="module")
def run(model):
    ids = torch.randint(3, 97, (1, N_TOKENS), generator=torch.Generator().manual_seed(1))
    return model.run(ids, record="blocks.*.hook_resid_post")


def test_window_is_the_induced_subgraph_of_the_last_tokens(model):
    ids = torch.randint(3, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    full = st.attention_graphs(model, ids, heads="0.1,1.3")
    cut = st.attention_graphs(model, ids, heads="0.1,1.3", window=6)  # every prompt >= 6: only 6 query rows recorded
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # a 4-token prompt: shorter than the window
    padded = st.attention_graphs(model, ids, heads="0.1,1.3", window=6, attention_mask=mask)
    for g in full.graphs:
        w = cut.get(g.layer, g.head, g.prompt)
        assert w.offset == 14 and w.tokens == g.tokens[14:]
        torch.testing.assert_close(w.weights, g.weights[14:, 14:])
        torch.testing.assert_close(w.weights, g.window(6).weights)
    assert cut.graphs[0].plot().axes[0].get_title().endswith("positions 14-19)")
    short = padded.get(1, 3, 1)
    assert short.offset == 0 and short.weights.shape == (4, 4)
    torch.testing.assert_close(short.weights, st.attention_graphs(model, ids[1:, :4], heads="1.3").get(1, 3).weights)
    torch.testing.assert_close(padded.get(0, 1, 0).weights, full.get(0, 1, 0).weights[14:, 14:])
    same = st.attention_graphs(model, ids, heads="0.1", window=20)  # window >= prompt: nothing changes
    torch.testing.assert_close(same.get(0, 1, 1).weights, full.get(0, 1, 1).weights)
    assert same.get(0, 1, 1).offset == 0


def test_graph_statistics_run_on_at_most_the_cap_and_the_page_says_so(model, run, monkeypatch):
    monkeypatch.setattr(report_structure, "MAX_GRAPH_POSITIONS", WINDOW)
    sizes = {"stats": [], "communities": []}
    compare, communities = graphs_module.compare_with_er, graphs_module.communities

    def counting_compare(adjacency, **kwargs):
        sizes["stats"].append(len(adjacency))
        return compare(adjacency, **kwargs)

    def counting_communities(weights, tokens, **kwargs):
        sizes["communities"].append(len(weights))
        return communities(weights, tokens, **kwargs)

    monkeypatch.setattr(graphs_module, "compare_with_er", counting_compare)
    monkeypatch.setattr(graphs_module, "communities", counting_communities)
    page = report_structure.section(model, run)
    n_graphs = 2 * model.dims.n_heads  # first and last layer of a 2-layer model
    assert sizes["stats"] == [WINDOW] * n_graphs
    assert sizes["communities"] == [WINDOW] * n_graphs  # once per graph: the diagrams reuse them
    assert f"Statistics on the last {WINDOW} of {N_TOKENS} positions" in page
    assert page.count("data:image/png;base64") == 1 + 3


def test_short_prompts_state_no_bound(model, run, monkeypatch):
    monkeypatch.setattr(report_structure, "MAX_GRAPH_POSITIONS", N_TOKENS)
    monkeypatch.setattr(sections, "MAX_TABLE_POSITIONS", N_TOKENS)
    monkeypatch.setattr(sections, "MAX_LABELLED_POSITIONS", N_TOKENS)
    table = sections.predictions(model, run)
    page = report_structure.section(model, run) + table + sections.residual_norms(model, run)
    assert "Statistics on the last" not in page and "Table of the last" not in page and "numbered" not in page
    assert [int(p) for p in re.findall(r"<tr><td>(\d+)</td>", table)] == list(range(N_TOKENS))


def test_predictions_table_and_position_figures_are_bounded(model, run, monkeypatch):
    monkeypatch.setattr(sections, "MAX_TABLE_POSITIONS", ROWS)
    monkeypatch.setattr(sections, "MAX_LABELLED_POSITIONS", ROWS)
    widths = []
    figure = sections._figure

    def recording_figure(width, height):
        widths.append(width)
        return figure(width, height)

    monkeypatch.setattr(sections, "_figure", recording_figure)
    page = sections.predictions(model, run)
    positions = [int(p) for p in re.findall(r"<tr><td>(\d+)</td>", page)]
    assert positions == list(range(N_TOKENS - ROWS, N_TOKENS))
    assert f"Table of the last {ROWS} of {N_TOKENS} positions" in page and f"All {N_TOKENS} positions" in page
    norms = sections.residual_norms(model, run)
    assert f"All {N_TOKENS} positions" in norms
    assert widths == [sections._position_width(ROWS)] * 2 == [max(6.0, 0.35 * ROWS)] * 2
