"""`mechscope probe|confidence|erase` through `cli.main`, on zoo:pycode and small data files."""

from __future__ import annotations

import json

import pytest

from mechscope.cli import main

from ..conftest import requires_pycode
from .helpers import stdlib_texts

pytestmark = requires_pycode
SITE = "blocks.1.hook_resid_post"
FAST = ["--l2", "0.01,0.1", "--min-steps", "60"]


@pytest.fixture(scope="module")
def code(tmp_path_factory):
    folder = tmp_path_factory.mktemp("code")
    for i, text in enumerate(stdlib_texts(10, chars=400)):
        (folder / f"m{i}.py").write_text(text)
    return folder


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_probe_train_and_eval(code, tmp_path, capsys):
    out = tmp_path / "probes"
    argv = ["probe", "train", "zoo:pycode", "--data", str(code), "--labels", "tokenize", "--sites", SITE]
    result = run_json(
        capsys, [*argv, *FAST, "--out", str(out), "--control", "--plot", str(tmp_path / "p.png"), "--json"]
    )
    row = result["sites"][SITE]
    assert row["accuracy"] > result["majority"] and row["selectivity"] is not None
    assert (out / "probe-00" / "probe.safetensors").is_file() and (tmp_path / "p.png").is_file()
    again = run_json(capsys, ["probe", "eval", str(out), "--data", str(code), "--json"])
    assert again["sites"][SITE]["accuracy"] > again["majority"]


def test_probe_from_a_jsonl_column(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    rows = [
        {"text": f"def f{i}(x):" if i % 2 else f"x{i} = {i}", "kind": "def" if i % 2 else "assign"} for i in range(40)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    argv = ["probe", "train", "zoo:pycode", "--data", str(data), "--labels", "kind", "--sites", SITE]
    result = run_json(capsys, [*argv, *FAST, "--out", str(tmp_path / "p"), "--json"])
    assert result["classes"] == ["assign", "def"] and result["sites"][SITE]["accuracy"] >= 0.9


def test_erase_fit_and_eval(code, tmp_path, capsys):
    out = tmp_path / "eraser"
    argv = ["erase", "fit", "zoo:pycode", "--data", str(code), "--labels", "tokenize", "--sites", SITE]
    assert run_json(capsys, [*argv, "--out", str(out), "--json"])["sites"] == [SITE]
    cost = run_json(capsys, ["erase", "eval", str(out), *FAST, "--json"])
    assert cost["loss_cost"] == pytest.approx(cost["loss_after"] - cost["loss_before"])
    probes = cost["probes"][SITE]
    assert probes["after"] < probes["before"]


def test_confidence_train_and_score(code, tmp_path, capsys):
    out = tmp_path / "conf"
    argv = ["confidence", "train", "zoo:pycode", "--data", str(code), "--sites", SITE, "--out", str(out)]
    result = run_json(capsys, [*argv, "--plot", str(tmp_path / "r.png"), "--json"])
    assert set(result["test"]) >= {"probe_raw", "probe_calibrated", "max_softmax", "entropy_auroc"}
    scored = run_json(capsys, ["confidence", "score", str(out), "x = 1\n", "--json"])
    assert [t["token"] for t in scored["tokens"]] and all(0 <= t["p_right"] <= 1 for t in scored["tokens"])
    assert main(["confidence", "score", str(out), "def f():"]) == 0
    assert "P(the next-token prediction is right)" in capsys.readouterr().out


def test_one_line_errors(tmp_path, capsys):
    assert main(["probe", "eval", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "no probe sweep" in capsys.readouterr().err
    empty = tmp_path / "none"
    empty.mkdir()
    argv = ["erase", "fit", "zoo:pycode", "--data", str(empty), "--labels", "tokenize", "--sites", SITE]
    assert main([*argv, "--out", str(tmp_path / "e")]) == 2
    assert "no data at" in capsys.readouterr().err
    assert main(["confidence", "score", str(tmp_path), "x"]) == 2
    assert "no confidence probe" in capsys.readouterr().err
