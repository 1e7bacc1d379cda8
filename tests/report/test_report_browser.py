"""The demo report opened as a file in a real browser (Debian's chromium through Python
playwright, no browser download): every figure loads and is named by its title and axes,
the index's links land on their sections, every section says what it shows, token cells
render visibly on one line. A full-page screenshot is written as a test artefact
($MECHSCOPE_ARTEFACTS, or a temporary folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..conftest import chromium_path, requires_chromium, requires_pycode

CHROMIUM = chromium_path()
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    requires_pycode,
    requires_chromium,
]

FIGURES = """() => [...document.images].map(img => ({
    alt: img.alt, width: img.naturalWidth, height: img.naturalHeight, shown: img.getBoundingClientRect().width,
    section: img.closest('body') && [...document.querySelectorAll('h2')].filter(
        h => h.compareDocumentPosition(img) & Node.DOCUMENT_POSITION_FOLLOWING).pop()?.textContent}))"""
TOKENS = """() => [...document.querySelectorAll('span.tok')].map(s => ({
    text: s.innerText, height: s.getBoundingClientRect().height, width: s.getBoundingClientRect().width}))"""
SECTIONS = """() => [...document.querySelectorAll('h2')].map(h => ({
    id: h.id, what: h.nextElementSibling && h.nextElementSibling.classList.contains('what')
        ? h.nextElementSibling.innerText : ''}))"""


@pytest.fixture(scope="module")
def page(demo_report):
    path = demo_report[3]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        tab = browser.new_page(viewport={"width": 1200, "height": 900})
        tab.goto(path.resolve().as_uri())
        tab.wait_for_load_state("load")
        yield tab
        folder = Path(os.environ.get("MECHSCOPE_ARTEFACTS") or path.parent)
        folder.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(folder / "report-demo.png"), full_page=True)
        browser.close()


def test_every_figure_loads_and_is_named_by_its_title_and_axes(page):
    figures = page.evaluate(FIGURES)
    assert len(figures) >= 12
    for f in figures:
        assert f["width"] > 50 and f["height"] > 50 and f["shown"] > 50, f  # decoded and laid out
        assert f["alt"] and not f["alt"].startswith(("plot", "figure")), f  # a title, not a placeholder
    patching = [f for f in figures if f["section"] == "Activation patching"]
    assert patching and "x: position: token" in patching[0]["alt"] and "y: layer" in patching[0]["alt"]


def test_index_links_land_on_their_sections_and_each_says_what_it_shows(page):
    sections = page.evaluate(SECTIONS)
    links = page.eval_on_selector_all("nav.toc a", "links => links.map(a => a.getAttribute('href'))")
    assert links == [f"#{s['id']}" for s in sections]
    assert all(len(s["what"]) > 30 for s in sections), [s["id"] for s in sections if len(s["what"]) <= 30]
    page.click(f"nav.toc a[href='{links[4]}']")
    top = page.evaluate(f"document.getElementById('{sections[4]['id']}').getBoundingClientRect().top")
    assert -2 < top < 50  # scrolled to the heading (to within sub-pixel rounding)


def test_token_cells_render_visibly_on_one_line(page):
    tokens = page.evaluate(TOKENS)
    line = min(t["height"] for t in tokens if t["height"] > 0)
    assert tokens and all(t["text"].strip() and t["width"] > 0 for t in tokens)
    assert all("\n" not in t["text"] and t["height"] < 1.5 * line for t in tokens)
    assert any(t["text"] == "⏎" for t in tokens)
