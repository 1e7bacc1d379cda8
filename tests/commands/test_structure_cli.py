"""`mechscope attention-graph` and `mechscope spectra`, configured on a fresh argparse
parser and run through `execute_*`, on tiny models saved to folders (loaded as users do)."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

import mechscope as ms
from mechscope.commands import structure as cmd

from ..models.tiny import tiny_model

WORDS = ["[UNK]", "[PAD]", "def", "add", "(", "a", ",", "b", ")", ":", "return", "+", "x", "y", "print"]


def word_tokenizer() -> T.PreTrainedTokenizerFast:
    """A word-level tokenizer built here (nothing from a hub)."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny Llama (grouped-query attention) with a tokenizer, and a copy with a rank-2 update."""
    root = tmp_path_factory.mktemp("models")
    model = tiny_model("llama")
    model.hf.save_pretrained(root / "base")
    word_tokenizer().save_pretrained(root / "base")
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        tuned.W_out(0).add_(0.5 * torch.randn(64, 2, generator=g) @ torch.randn(2, 32, generator=g))
    tuned.hf.save_pretrained(root / "tuned")
    tiny_model("mistral").hf.save_pretrained(root / "other")
    return {name: str(root / name) for name in ("base", "tuned", "other")}


def parse(configure, argv: list[str]) -> argparse.Namespace:
    return configure(argparse.ArgumentParser()).parse_args(argv)


PROMPT = "def add ( a , b ) : return a + b"


def test_attention_graph_json(folders, capsys):
    args = parse(
        cmd.configure_attention_graph,
        [folders["base"], PROMPT, "--heads", "0.1,1.3", "--threshold", "0.05", "--null", "10", "--json"],
    )
    assert cmd.execute_attention_graph(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"][:3] == ["def", "add", "("] and len(out["tokens"]) == 12
    assert [(h["layer"], h["head"]) for h in out["heads"]] == [(0, 1), (1, 3)]
    assert {"density", "clustering_z", "elbow", "communities", "modularity"} <= set(out["heads"][0])
    assert out["plots"] == []


def test_attention_graph_plots(folders, tmp_path, capsys):
    args = parse(
        cmd.configure_attention_graph,
        [folders["base"], PROMPT, "--heads", "1.2", "--null", "5", "--plots", str(tmp_path)],
    )
    assert cmd.execute_attention_graph(args) == 0
    assert "wrote 4 plots" in capsys.readouterr().out
    names = sorted(p.name for p in tmp_path.iterdir())  # no temporary files left
    assert names == ["L1H2_embedding.png", "L1H2_graph.png", "L1H2_scree.png", "L1H2_stats.png"]
    assert (tmp_path / "L1H2_graph.png").read_bytes()[:4] == b"\x89PNG"


def test_attention_graph_text_table(folders, capsys):
    assert (
        cmd.execute_attention_graph(parse(cmd.configure_attention_graph, [folders["base"], PROMPT, "--null", "5"])) == 0
    )
    text = capsys.readouterr().out
    assert "Erdős–Rényi" in text and "clustering_z" in text
    assert len([line for line in text.splitlines() if line.strip()]) == 2 + 8  # header lines + 2 layers x 4 heads


def test_attention_graph_errors(folders):
    with pytest.raises(ms.MechscopeError, match=r"unknown head 3\.0"):
        cmd.execute_attention_graph(parse(cmd.configure_attention_graph, [folders["base"], PROMPT, "--heads", "3.0"]))
    with pytest.raises(ms.MechscopeError, match="no tokenizer"):
        cmd.execute_attention_graph(parse(cmd.configure_attention_graph, [folders["tuned"], PROMPT]))


def test_spectra_vs_finds_the_planted_update(folders, tmp_path, capsys):
    args = parse(cmd.configure_spectra, [folders["base"], "--vs", folders["tuned"], "--json", "--plots", str(tmp_path)])
    assert cmd.execute_spectra(args) == 0
    out = json.loads(capsys.readouterr().out)
    ranks = {r["name"]: r["rank"] for r in out["diff"]["rows"]}
    assert ranks["blocks.0.mlp.W_out"] == 2 and sum(ranks.values()) == 2
    assert {r["kind"] for r in out["spectra"]} >= {"OV", "QK", "W_gate", "W_E", "W_U"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "spectra_effective_rank.png",
        "spectra_stable_rank.png",
        "update_rank.png",
        "update_relative_norm.png",
    ]


def test_spectra_text(folders, capsys):
    assert cmd.execute_spectra(parse(cmd.configure_spectra, [folders["base"], "--vs", folders["tuned"]])) == 0
    text = capsys.readouterr().out
    assert "OV_eff_rank" in text and "W_E: effective rank" in text and "blocks.0.mlp.W_out" in text


def test_spectra_mismatched_models(folders):
    with pytest.raises(ms.MechscopeError, match="shapes differ"):
        cmd.execute_spectra(parse(cmd.configure_spectra, [folders["base"], "--vs", folders["other"]]))


def test_report_section(folders):
    from mechscope.report.structure import section

    model = ms.load(folders["base"])
    without = section(model, None)
    assert (
        without.startswith("<h2>Structure</h2>") and "Weight spectra" in without and "Attention graphs" not in without
    )
    page = section(model, model.run(PROMPT, record="blocks.*.hook_resid_post"))
    assert "Attention graphs" in page and page.count("data:image/png;base64") == 1 + 3
    from mechscope.module_model import ModuleModel

    assert section(ModuleModel(torch.nn.Linear(2, 2)), None) == ""


def test_cli_counts_below_their_minimum_are_one_line(capsys):
    from mechscope.cli import main

    for argv, text in [
        (["attention-graph", "zoo:chain", "a b c d", "--null", "-1"], "n_null must be 0"),
        (["spectra", "zoo:chain", "--top-k", "0"], "top_k must be at least 1"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mechscope: error:") and "\n" not in err and text in err, err
