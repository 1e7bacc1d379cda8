"""The report as a page a person reads (issue 21 item 3), on the demo's own prompt.

Every figure the report embeds passes through `Figure.savefig`; `report.figures.checking`
checks each one there (title, labelled axes and colour bars, legends, no empty panel, no
overlapping or invisible tick labels), so the checks below see exactly what the page holds.
"""

from __future__ import annotations

import re

import pytest
import torch

from mechscope.report.figures import problems

from ..conftest import requires_pycode
from .conftest import build_checked


@pytest.fixture(scope="module")
def demo(demo_report):
    return demo_report[:3]


@pytest.fixture(scope="module")
def modadd(tmp_path_factory):
    return build_checked("zoo:modadd", None, tmp_path_factory.mktemp("modadd"))[:3]


@requires_pycode
def test_index_at_the_top_links_every_section_in_order(demo):
    text, page, _ = demo
    assert text.index("<nav") < text.index("<h2")
    assert page.index == [s.id for s in page.sections] and len(page.index) >= 10
    assert len(set(page.index)) == len(page.index) and all(page.index)


@requires_pycode
def test_every_section_says_what_it_shows(demo):
    _, page, _ = demo
    missing = [s.title for s in page.sections if len(s.what.strip()) < 20]
    assert not missing, f"sections without a 'what this shows' line: {missing}"


@requires_pycode
def test_every_embedded_figure_is_titled_labelled_and_not_empty(demo):
    text, page, seen = demo
    images = [alt for s in page.sections for alt in s.images]
    assert len(seen) == len(images) == text.count("<img") >= 12  # every image was checked
    bad = {title: found for title, found, _ in seen if found}
    assert not bad, bad
    assert all(alt and alt != "plot" for alt in images)  # the alt text names the figure


@requires_pycode
def test_patching_runs_on_the_demo_prompt_with_a_span_it_chose(demo):
    _, page, seen = demo
    section = page.section("Activation patching")
    assert section.images and "Skipped" not in section.text
    position = int(re.search(r"the token at position (\d+) swapped", section.text)[1])
    heatmap = next(fig for title, _, fig in seen if "patching of blocks" in title)
    ticks = [t.get_text() for t in heatmap.axes[0].get_xticklabels()]
    assert ticks[0].startswith(f"{position}:")  # the sweep starts at the swapped token


@requires_pycode
def test_series_in_the_model_card_are_summarised_not_dumped(demo):
    text, page, seen = demo
    assert "[[" not in text
    assert any(c.startswith("70 points") for c in page.cells)  # copying_curve
    assert any("copying" in title for title, _, _ in seen)  # ... drawn under Figures


@requires_pycode
def test_whitespace_tokens_are_shown_visibly_in_cells_and_labels(demo):
    _, page, seen = demo
    assert page.tokens and not [t for t in page.tokens if not t.strip() or "\n" in t]
    assert "⏎" in page.tokens and any(t.startswith("·") for t in page.tokens)
    labels = [t.get_text() for _, _, fig in seen for ax in fig.axes for t in ax.get_xticklabels()]
    assert any("⏎" in t for t in labels) and not any("\n" in t for t in labels)


@requires_pycode
def test_eap_caption_names_exactly_the_colours_the_drawing_uses(demo):
    from matplotlib.colors import to_hex

    from mechscope.circuits.circuit import CHANNEL_COLOURS

    _, page, seen = demo
    section = page.section("Circuit (EAP)")
    caption = re.search(r"edge colours, as in the legend: ([^.]*)\.", section.text)[1]
    named = {part.split(":")[0].strip() for part in caption.split(";")}
    drawing = next(fig for title, _, fig in seen if title.startswith("eap circuit"))
    ax = drawing.axes[0]
    drawn = {to_hex(p.get_edgecolor()) for p in ax.patches}  # networkx arrows are patches
    legend = {to_hex(line.get_color()) for line in ax.get_legend().get_lines()}
    names = {to_hex(c): c.removeprefix("tab:").replace("gray", "grey") for c in CHANNEL_COLOURS.values()}
    assert drawn == legend and {names[c] for c in drawn} == named
    assert "query blue" not in section.text


def test_a_circuit_that_keeps_nothing_is_commented():
    from mechscope.report.circuits import _comment

    assert "do not carry the behaviour" in _comment([(12, 0.0), (50, 0.57), (200, 1.03)])
    assert "about 50 edges" in _comment([(12, 0.02), (50, 0.57), (200, 1.03)])
    assert "do not carry" not in _comment([(12, 0.8), (50, 0.9)])
    assert "wrong way" in _comment([(12, -0.4)])


def test_the_checker_catches_each_defect():
    """Each rule fails on a figure that breaks it (so the report test above can fail)."""
    from mechscope.plots import figure

    fig, ax = figure(4, 3)
    ax.plot([0, 1], [0, 1])
    assert "figure has no title" in problems(fig)
    assert any("x axis has tick labels but no label" in p for p in problems(fig))
    fig, _ = figure(8, 3)  # an empty panel beside a drawn one
    fig.clear()
    left, right = fig.subplots(1, 2)
    right.plot([0, 1], [1, 2], label="a")
    right.plot([0, 1], [2, 3], label="b")
    for a in (left, right):
        a.set(title="t", xlabel="x", ylabel="y")
    found = problems(fig)
    assert any("panel 0: empty panel" in p for p in found) and any("in no legend" in p for p in found)
    fig, ax = figure(2.0, 2)  # fractional layer ticks on a narrow panel: the per-head spectra defect
    ax.scatter([-0.1, 0.1], [1, 2])
    ax.set_xticks([-0.1, -0.075, -0.05, -0.025, 0, 0.025, 0.05, 0.075, 0.1])
    ax.set(title="t", xlabel="layer", ylabel="y")
    assert any("tick labels overlap" in p for p in problems(fig))
    fig, ax = figure(4, 3)
    image = ax.imshow([[0, 1], [1, 0]])
    ax.set_xticks([0, 1], ["a", "\n"])
    ax.set(title="t", xlabel="x", ylabel="y")
    fig.colorbar(image, ax=ax)
    found = problems(fig)
    assert any("colour bar without a label" in p for p in found) and any("whitespace" in p for p in found)


def test_modadd_report_tells_no_one_to_shorten_anything_and_has_no_empty_panel(modadd):
    text, page, seen = modadd
    assert "shorten" not in text and "truncate" not in text
    eap = page.section("Circuit (EAP)")
    assert "Skipped" in eap.text and "reads 3" in eap.text
    assert not {title: found for title, found, _ in seen if found}
    spectra = next(fig for title, _, fig in seen if "per-head circuits" in title)
    assert len(spectra.axes) == 1  # no blank "whole matrices" panel
    assert [t.get_text() for t in spectra.axes[0].get_xticklabels()] == ["0"]  # one layer: one tick


def test_patching_cost_is_bounded_on_long_prompts_and_the_page_says_so(monkeypatch):
    import mechscope.patching as package
    from mechscope.report import patching

    from ..models.tiny import tiny_model

    model = tiny_model("llama")
    ids = torch.randint(3, 97, (1, 60), generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(patching, "MAX_CONTEXT", 32)  # the tiny model reads 64 positions
    swept = []
    original = package.sweep

    def spy(model, task, *args, **kwargs):
        swept.append((task.clean.shape[1], len(kwargs["positions"])))
        return original(model, task, *args, **kwargs)

    monkeypatch.setattr(package, "sweep", spy)  # the section imports it from mechscope.patching when called
    text = patching.section(model, model.run(ids))
    assert swept == [(patching.MAX_CONTEXT, swept[0][1])] and swept[0][1] <= patching.MAX_POSITIONS
    assert "The prompt has 60 tokens: patching runs on its first token and its last 31" in text
    assert "<img" in text


@pytest.mark.parametrize("kind", ["gpt2"])  # the demo covers llama (zoo:pycode)
def test_every_section_on_a_model_without_tokenizer_draws_readable_figures(kind):
    from mechscope.report.figures import checking
    from mechscope.report.sections import SECTIONS

    from ..models.tiny import tiny_model

    model = tiny_model(kind)
    run = model.run(
        torch.randint(3, 97, (1, 30), generator=torch.Generator().manual_seed(0)), record="blocks.*.hook_resid_post"
    )
    with checking() as seen:
        parts = [section(model, run) for section in SECTIONS]
    assert len(seen) >= 10 and not {title: found for title, found, _ in seen if found}
    assert sum(part.count("<img") for part in parts) == len(seen)
