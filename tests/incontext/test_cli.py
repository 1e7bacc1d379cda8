"""`mechscope fv` and `mechscope relation` from the command line (called in-process)."""

from __future__ import annotations

import json

import pytest

from mechscope.cli import main
from mechscope.incontext import FunctionVectorResult, RelationResult


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_fv_fit_save_plot_and_apply(tmp_path, capsys):
    args = ["fv", "zoo:icl", "--task", "icl/successor", "--heads", "3", "--shots", "4", "--prompts", "24"]
    saves = ["--save", str(tmp_path / "fv"), "--save-result", str(tmp_path / "res"), "--plots", str(tmp_path / "plots")]
    assert main([*args, *saves, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert FunctionVectorResult.load(tmp_path / "res").fv_accuracy == out["fv_accuracy"]
    assert out["task"] == "icl/successor" and len(out["heads"]) == 3 and out["tokens_saved"] == 16
    assert (tmp_path / "fv" / "cfg.json").is_file() and (tmp_path / "plots" / "fv_icl_successor.png").is_file()
    assert main(["fv", "apply", "zoo:icl", "n7 ->", "--vector", str(tmp_path / "fv"), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["top"]
    assert set(top) == {"with", "without"}
    if out["fv_accuracy"] >= 0.8:
        assert top["with"][0][0].strip() == "n8"
    report = ["report", "zoo:icl", "--prompt", "n3 -> n4 ; n7 ->", "--out", str(tmp_path / "report")]
    assert main([*report, "--fv", str(tmp_path / "res")]) == 0
    assert "Function vector: icl/successor" in (tmp_path / "report" / "index.html").read_text()


def test_fv_bad_input(tmp_path, capsys):
    (tmp_path / "one.jsonl").write_text('{"input": "n1", "output": "n2"}\n')
    assert main(["fv", "zoo:icl", "--task", str(tmp_path / "one.jsonl")]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["fv", "zoo:icl"]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(["fv", "apply", "zoo:icl", "n7 ->"]) == 2
    assert "usage" in capsys.readouterr().err
    assert main(["fv", "apply", "zoo:icl", "n7 ->", "--vector", str(tmp_path / "none")]) == 2
    assert "no saved function_vector" in capsys.readouterr().err


def test_relation_command(tmp_path, capsys):
    # subjects are matched as the first substring: skip n1 (a prefix of n10..n15)
    items = [i for i in range(16) if i != 1]
    rows = [{"prompt": f"n{(s + 5) % 16} -> n{(s + 6) % 16} ; n{s} ->", "subject": f"n{s}"} for s in items]
    (tmp_path / "succ.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["relation", "zoo:icl", "--samples", str(tmp_path / "succ.jsonl"), "--subject-site"]
    args = [*base, "blocks.0.hook_resid_post", "--object-site", "blocks.2.hook_resid_post", "--json"]
    assert (
        main(
            [
                *args,
                "--plots",
                str(tmp_path / "p"),
                "--save",
                str(tmp_path / "lre"),
                "--save-result",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["faithfulness"] <= 1 and out["n_fit"] == 7 and out["n_test"] == 8
    assert (tmp_path / "p" / "relation_succ.png").is_file() and (tmp_path / "lre" / "cfg.json").is_file()
    assert RelationResult.load(tmp_path / "r").faithfulness == out["faithfulness"]
    report = ["report", "zoo:icl", "--out", str(tmp_path / "report"), "--relation", str(tmp_path / "r")]
    assert main(report) == 0
    assert "relation" in (tmp_path / "report" / "index.html").read_text().lower()
    (tmp_path / "bad.jsonl").write_text('{"prompt": "n1 ->", "subject": "n9"}\n{"prompt": "n2 ->", "subject": "n2"}\n')
    bad = ["relation", "zoo:icl", "--samples", str(tmp_path / "bad.jsonl"), "--subject-site"]
    assert main([*bad, "blocks.0.hook_resid_post", "--object-site", "blocks.2.hook_resid_post"]) == 2
    assert "not in the prompt" in capsys.readouterr().err
