"""The report's dictionary sections: no "dead" verdict from one prompt, and a warning when
a dictionary or crosscoder belongs to another model (issue 21 item 3)."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.dictionary.base import build
from mechscope.dictionary.config import CoderConfig
from mechscope.report.crosscoder import section as crosscoder_section
from mechscope.report.figures import checking
from mechscope.report.sae import section as sae_section

from ..models.tiny import tiny_model
from .page import Page

SITE = "blocks.1.hook_resid_post"
DEAD_ROW = "dead fraction (never active on the evaluation corpus)"


@pytest.fixture(scope="module")
def model():
    return tiny_model("gpt2")


@pytest.fixture(scope="module")
def run(model):
    return model.run(torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(0)))


def _row(page: Page, label: str) -> list[str]:
    i = page.cells.index(label)
    return page.cells[i + 1 : i + 3]


def test_a_prompt_gives_no_dead_fraction_the_corpus_does(model, run, tmp_path):
    sae = build(CoderConfig("topk", 32, 64, k=4, hook_name=SITE, model_name=model.name))
    sae.save(tmp_path / "sae")
    with checking() as seen:
        page = Page(sae_section(model, run, tmp_path / "sae"))
    assert _row(page, DEAD_ROW)[0] == "–"  # the prompt's column: not judged
    assert "cannot judge it" in page.sections[0].text and "12 prompt tokens" in page.sections[0].text
    assert seen and not [found for _, found, _ in seen if found]  # its figure is titled and labelled
    (tmp_path / "sae" / "eval.json").write_text(json.dumps({"l0": 4.0, "fvu": 0.5, "dead_fraction": 0.25}))
    page = Page(sae_section(model, run, tmp_path / "sae"))
    assert _row(page, DEAD_ROW) == ["0.25", "–"]  # held-out corpus, report prompt


def test_a_dictionary_of_another_model_is_flagged(model, run, tmp_path):
    build(CoderConfig("topk", 32, 64, k=4, hook_name=SITE, model_name="gpt2-medium")).save(tmp_path / "other")
    build(CoderConfig("topk", 32, 64, k=4, hook_name=SITE, model_name=model.name)).save(tmp_path / "own")
    assert "trained on gpt2-medium, not on tiny-gpt2" in sae_section(model, run, tmp_path / "other")
    assert "class='warn'" not in sae_section(model, run, tmp_path / "own")


def test_a_crosscoder_of_another_model_is_flagged(model, run, tmp_path, caplog):
    sites = ("blocks.0.hook_resid_post", SITE)
    trained = {
        "own": model.name,
        "layers": "EleutherAI/pythia-70m",
        "pair": "base vs tuned",
        "mine": "tiny-gpt2 vs tuned",
    }
    for name, trained_on in trained.items():
        build(CoderConfig("crosscoder", 64, 16, blocks=sites, model_name=trained_on)).save(tmp_path / name)
    assert "class='warn'" not in crosscoder_section(model, run, tmp_path / "own")
    with caplog.at_level("WARNING"):
        text = crosscoder_section(model, run, tmp_path / "layers")
    assert "trained on EleutherAI/pythia-70m, not on tiny-gpt2" in text and "pythia-70m" in caplog.text
    assert "trained on base and tuned" in crosscoder_section(model, run, tmp_path / "pair")
    assert "class='warn'" not in crosscoder_section(model, run, tmp_path / "mine")  # one of the pair is this model


def test_silent_latents_are_not_shown_as_the_prompts_features(model, run, tmp_path):
    sae = build(CoderConfig("relu", 32, 64, hook_name=SITE, model_name=model.name))
    with torch.no_grad():
        sae.b_enc.fill_(-1e6)  # nothing fires
    sae.save(tmp_path / "silent")
    with checking() as seen:
        text = sae_section(model, run, tmp_path / "silent")
    assert "No latent is active anywhere on the prompt" in text and "<h4>feature" not in text
    assert not [found for _, found, _ in seen if found]
