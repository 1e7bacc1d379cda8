"""`mechscope report` with the acting methods' artefacts: a steering vector, a probe and an
eraser each add their section, and an image classifier gets its attribution section."""

from __future__ import annotations

import pytest

import mechscope as ms
from mechscope.cli import main

from ..conftest import requires_pycode

PROMPT = "def add(a, b):\n    return a + b\n"


@requires_pycode
def test_report_with_vector_probe_and_eraser(tmp_path):
    from mechscope.concepts import collect, fit_eraser, probe_layers, python_token_kinds
    from mechscope.steering import contrast

    model = ms.load("zoo:pycode")
    site = "blocks.1.hook_resid_post"
    pairs = [("def f(self):\n    return", "x = [1, 2,"), ("class A:\n    def", "import os\nimport")]
    contrast(model, pairs, site).save(tmp_path / "v")
    texts = [PROMPT, "import os\n\n\nclass Foo:\n    pass\n", "for i in range(10):\n    print(i)\n"] * 3
    fast = dict(epochs=2, min_steps=30, l2=(1e-1,))
    probe_layers(collect(model, texts, python_token_kinds, site), control=False, **fast).save(tmp_path / "p")
    fit_eraser(model, texts, python_token_kinds, site).save(tmp_path / "e")
    out = tmp_path / "report"
    args = ["report", "zoo:pycode", "--prompt", PROMPT, "--out", str(out)]
    args += ["--vector", str(tmp_path / "v"), "--probe", str(tmp_path / "p"), "--eraser", str(tmp_path / "e")]
    assert main(args) == 0
    page = (out / "index.html").read_text()
    assert "Steering" in page and "Concepts" in page and "LEACE eraser" in page
    assert page.count("What this shows") >= 10


@pytest.mark.skipif(not (ms.zoo.WEIGHTS / "digits").is_dir(), reason="zoo:digits weights are not shipped")
def test_report_of_an_image_classifier_has_attribution_maps(tmp_path):
    assert main(["report", "zoo:digits", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "index.html").read_text()
    assert "Where the classifier looks" in page and "Sanity of gradcam" in page
