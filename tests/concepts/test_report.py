"""The report's concepts section: probe sweep, confidence probe and eraser on the prompt."""

from __future__ import annotations

import pytest

import mechscope as ms
from mechscope.concepts import collect, fit_eraser, probe_layers, python_token_kinds, train_confidence
from mechscope.concepts.heads import ProbeConfig
from mechscope.report.concepts import section, strip

from ..conftest import requires_pycode
from .helpers import stdlib_texts

pytestmark = requires_pycode
SITE = "blocks.1.hook_resid_post"
FAST = dict(epochs=2, min_steps=60, l2=(1e-2, 1e-1))


@pytest.fixture(scope="module")
def model():
    return ms.load("zoo:pycode")


def test_section_shows_probe_confidence_and_eraser(model, tmp_path):
    texts = stdlib_texts(10, chars=400)
    probes = probe_layers(collect(model, texts, python_token_kinds, SITE), control=False, **FAST).save(tmp_path / "p")
    conf = train_confidence(model, texts, sites=SITE, cfg=ProbeConfig(**FAST)).save(tmp_path / "c")
    eraser = fit_eraser(model, texts, python_token_kinds, SITE).save(tmp_path / "e")
    run = model.run("def add(a, b):\n    return a + b\n")
    assert section(model, run) == ""
    html = section(model, run, probe_dir=probes, eraser_dir=eraser)
    assert "<h2>Concepts</h2>" in html and "LEACE eraser" in html and html.count('class="tok"') == 13
    html = section(model, run, probe_dir=conf)
    assert "Confidence probe" in html and "AUROC" in html and html.count('class="tok"') == 13


def test_strip_escapes_and_colours():
    out = strip(["<a>", "\n"], [0.0, 1.0], ["x", "y"])
    assert "&lt;a&gt;" in out and "⏎" in out and "rgb(255,0,120)" in out and "rgb(0,255,120)" in out
