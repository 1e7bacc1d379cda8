"""The dashboard and the report in a real browser: Debian's chromium, headless, driven by
Python playwright (no browser download). Screenshots go to $MECHSCOPE_ARTEFACTS (or a
temporary folder) as test artefacts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mechscope import features
from mechscope.circuits.circuit import Circuit
from mechscope.circuits.graph import Graph
from mechscope.server.core import Running
from mechscope.server.dashboard import dashboard_app
from tests.conftest import chromium_path, requires_chromium, requires_pycode
from tests.features.helpers import SCRIPT_TOKEN, dashboard_store

CHROMIUM = chromium_path()
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    requires_pycode,
    requires_chromium,
]
LATENT = 5


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("MECHSCOPE_ARTEFACTS") or tmp_path_factory.mktemp("browser-artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser")
    model, coder, store, token = dashboard_store(folder, LATENT)
    graph = Graph.from_model(model)
    edges = [e for e in graph.edges if e[1] != "logits"][:10] + [e for e in graph.edges if e[1] == "logits"][:4]
    Circuit(graph, edges, torch.linspace(1, -1, len(edges)), method="eap", metric="logit_diff", model=model.name).save(
        folder / "circuit"
    )
    with Running(dashboard_app([store], model=model, circuits=[folder / "circuit"])) as server:
        yield model, store, token, server.url


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.dialogs = []  # any alert() a page opens: escaping failed
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    yield page
    assert page.dialogs == [], "a page ran script from its data"
    context.close()


def test_feature_page_highlights_the_store_values(page, served, artefacts):
    _, store, _, url = served
    expected = features.open(store).feature(LATENT)
    page.goto(f"{url}/feature/store/{LATENT}")
    examples = page.locator("#top .ctx")
    assert examples.count() == len(expected.top)
    for i, e in enumerate(expected.top):
        shown = examples.nth(i).locator(".tok").evaluate_all("spans => spans.map(s => s.dataset.act)")
        assert [float(a) for a in shown] == e.acts  # the exact values, read back from the DOM
    centre = examples.first.locator(".tok.centre")
    assert centre.inner_text() == SCRIPT_TOKEN  # the hostile token shows as text
    centre.hover()
    hover = page.locator("#hover")
    hover.wait_for(state="visible")
    assert f"{expected.top[0].value:.4g}"[:4] in hover.inner_text()
    assert page.locator("svg.hist rect").count() == len(expected.histogram["heights"])
    page.screenshot(path=str(artefacts / "feature.png"), full_page=True)
    assert (artefacts / "feature.png").stat().st_size > 0


def test_search_finds_a_latent_by_token(page, served, artefacts):
    _, _, _, url = served
    page.goto(url + "/")
    page.fill("input[name=token]", "<script>")
    page.click("form.search button")
    page.wait_for_load_state()
    links = page.locator("table.latents tbody a").all_inner_texts()
    assert str(LATENT) in links
    assert SCRIPT_TOKEN in page.locator("table.latents tbody").inner_text()
    page.click(f"table.latents a:text-is('{LATENT}')")
    page.wait_for_url(f"**/feature/store/{LATENT}")
    page.screenshot(path=str(artefacts / "search.png"))


def test_prompt_page_shows_per_token_latents(page, served, artefacts):
    model, _, token, url = served
    text = model.tokenizer.decode([token])
    prompt = f"x ={text} 1\nfor{text} y"
    ids = model.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    page.goto(url + "/prompt")
    page.fill("#prompt", prompt)
    page.click("#prompt-form button")
    rows = page.locator("table.latents[data-store=store] tr[data-index]")
    rows.first.wait_for()
    assert rows.count() == len(ids)
    for i, t in enumerate(ids):
        listed = rows.nth(i).locator("a.latent").evaluate_all("a => a.map(x => +x.dataset.latent)")
        assert (LATENT in listed) == (t == token)
    assert page.locator("#lens tr").count() == 1 + model.dims.n_layers + 1  # header, embed, one per layer
    page.select_option("#att-layer", "1")
    assert page.locator("#attention .heat div").count() == len(ids) ** 2
    page.screenshot(path=str(artefacts / "prompt.png"), full_page=True)


def test_circuit_page_draws_the_graph(page, served, artefacts):
    _, _, _, url = served
    page.goto(url + "/circuit/circuit")
    page.locator("svg#circuit path").first.wait_for(state="attached")
    assert page.locator("svg#circuit path").count() == 14
    dashed = page.locator("svg#circuit path[stroke-dasharray='5 3']").count()
    assert dashed == 7  # the scores run from 1 to -1: half of them negative
    node = page.locator("svg#circuit g[data-node]").first
    name = node.get_attribute("data-node")
    node.click()
    assert page.locator("#edge-info").inner_text().startswith(f"{name}:")
    page.screenshot(path=str(artefacts / "circuit.png"))


@pytest.mark.slow
def test_report_opened_as_a_file(page, served, tmp_path, artefacts):
    """`mechscope report` output in the browser: headings, every image decoded and described,
    and a prompt's `<script>` shown as text, never run."""
    from mechscope.report import build_report

    model = served[0]
    prompt = "<script>alert(1)</script>\ndef add(a, b):\n    return a + b"
    path = build_report(model, prompt, tmp_path / "report")
    page.goto(path.resolve().as_uri())
    assert page.locator("h1").count() >= 1 and page.locator("h2").count() >= 3
    images = page.locator("img")
    assert images.count() >= 3
    described = images.evaluate_all(
        "imgs => imgs.map(i => (i.alt || i.title || '').trim().length > 0 && i.complete && i.naturalWidth > 0)"
    )
    assert all(described), "an image without alt/title text, or one that does not decode"
    assert "<script>alert(1)</script>" in page.locator("body").inner_text()
    assert not page.evaluate("[...document.scripts].some(s => s.textContent.includes('alert(1)'))")
    page.screenshot(path=str(artefacts / "report.png"), full_page=True)
