"""Prompts and contexts past a model's positions are refused, or cut where asked (issue 25
item 5): rotary models would otherwise run on positions they never saw, learned-position
models would index past their table."""

from __future__ import annotations

import json
import logging

import pytest
import torch

import mechscope as ms
from mechscope.cli import main

from .conftest import requires_pycode
from .lens.helpers import save_worded, worded_model, write_corpus
from .models.tiny import tiny_model

LONG = "def f(x):\n    return x + 1\n" * 400  # thousands of tokens


@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # rotary, learned positions; both 64 positions
def test_token_ids_past_the_context_are_refused_or_cut(kind, caplog):
    model = tiny_model(kind)
    assert model.context_length == 64
    ids = torch.randint(0, 97, (2, 65))
    with pytest.raises(ms.MechscopeError, match="65 tokens, which exceed this model's 64 positions") as err:
        model.tokenize(ids)
    assert "\n" not in str(err.value) and "truncate" in str(err.value)
    with pytest.raises(ms.MechscopeError, match="exceed this model's 64 positions"):
        model.run(ids)
    with caplog.at_level(logging.WARNING, logger="mechscope.model"):
        cut = model.tokenize(ids, truncate=True)
    assert cut["input_ids"].shape == (2, 64) and torch.equal(cut["input_ids"], ids[:, :64])
    assert cut["attention_mask"].shape == (2, 64) and "kept its first 64" in caplog.text
    assert model.tokenize(ids[:, :64])["input_ids"].shape == (2, 64)  # exactly the context is fine


def test_text_past_the_context_names_the_longest_prompt():
    model = worded_model()  # GPT-2, 64 learned positions
    with pytest.raises(ms.MechscopeError, match=r"prompt 1 has \d+ tokens, which exceed this model's 64 positions"):
        model.tokenize(["a short one", LONG])
    cut = model.tokenize(["a short one", LONG], truncate=True)
    assert cut["input_ids"].shape[1] == 64 and int(cut["attention_mask"][0].sum()) < 64


@requires_pycode
def test_rotary_zoo_model_refuses_a_long_prompt_in_run_and_lens(capsys):
    model = ms.load("zoo:pycode")
    assert model.context_length == 128  # max_position_embeddings
    with pytest.raises(ms.MechscopeError, match="exceed this model's 128 positions"):
        model.run(LONG)
    for argv in (["run", "zoo:pycode", LONG], ["lens", "zoo:pycode", LONG, "--positions", "-1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "exceed this model's 128 positions" in err and "\n" not in err
    assert main(["run", "zoo:pycode", LONG, "--truncate", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["tokens"]) == 128
    assert main(["lens", "zoo:pycode", LONG, "--truncate", "--positions", "-1", "--json", "--k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["positions"] == [127]


@pytest.fixture(scope="module")
def worded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("context")
    corpus = write_corpus(tmp / "corpus.jsonl", 60)
    return str(save_worded(tmp / "model")), str(corpus), tmp


def test_ctx_longer_than_the_model_is_refused_and_the_default_fits(worded, capsys, caplog):
    model, corpus, tmp = worded
    sae = [
        "sae",
        "train",
        model,
        "--site",
        "blocks.0.hook_resid_post",
        "--data",
        corpus,
        "--width",
        "16",
        "--k",
        "2",
        "--total-tokens",
        "128",
        "--batch-tokens",
        "64",
        "--warmup",
        "0",
        "--eval-contexts",
        "1",
        "--no-progress",
    ]
    for argv in (
        [*sae, "--out", str(tmp / "sae"), "--ctx", "65"],
        ["lens", "train", model, "--data", corpus, "--out", str(tmp / "lens"), "--ctx", "512"],
        [
            "sae",
            "cache",
            model,
            "--site",
            "blocks.0.hook_resid_post",
            "--data",
            corpus,
            "--out",
            str(tmp / "cache"),
            "--ctx",
            "100",
        ],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "context of 64 positions: give --ctx 64 or less" in err and "\n" not in err, err
    assert not (tmp / "sae").exists() and not (tmp / "lens").exists()
    # no --ctx: lens train's default (256) is cut to the model's 64 positions, and says so
    with caplog.at_level(logging.WARNING, logger="mechscope.commands.checks"):
        assert (
            main(
                [
                    "lens",
                    "train",
                    model,
                    "--data",
                    corpus,
                    "--out",
                    str(tmp / "lens"),
                    "--steps",
                    "1",
                    "--batch",
                    "2",
                    "--eval-contexts",
                    "1",
                    "--no-progress",
                ]
            )
            == 0
        )
    assert "contexts of 64 tokens" in caplog.text
    assert "contexts of 64 tokens" in capsys.readouterr().out
