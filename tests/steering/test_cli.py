"""`mechscope steer ...`: the commands run end to end; bad input fails in one line and writes nothing."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope import steering
from mechscope.cli import main
from mechscope.errors import MechscopeError
from mechscope.steering import SteeringVector

from .conftest import PAIRS


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"positive": p, "negative": n}) + "\n" for p, n in PAIRS * 2))
    return path


def test_vector_generate_search_and_gguf(pycode, pairs_file, tmp_path, capsys):
    out = tmp_path / "v"
    args = ["steer", "vector", "zoo:pycode", "--pairs", str(pairs_file), "--sites", "blocks.2.hook_resid_post"]
    assert main([*args, "--out", str(out), "--json"]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["sites"] == ["blocks.2.hook_resid_post"] and saved["n_pairs"] == 12
    direct = steering.contrast(pycode, PAIRS * 2, "blocks.2.hook_resid_post", progress=False)
    assert torch.allclose(SteeringVector.load(out).directions["blocks.2.hook_resid_post"],
                          direct.directions["blocks.2.hook_resid_post"], atol=1e-5)  # fmt: skip

    gen = ["steer", "generate", "zoo:pycode", "def f(x):", "--vector", str(out), "--strength", "6"]
    assert main([*gen, "--where", "generated", "--max-new-tokens", "8", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    expected = steering.generate(pycode, "def f(x):", (direct, 6.0, "generated"), max_new_tokens=8)
    assert shown["steered"] == expected and shown["unsteered"] == pycode.generate("def f(x):", max_new_tokens=8)

    plots = tmp_path / "plots"
    search = ["steer", "search", "zoo:pycode", "--pairs", str(pairs_file), "--layers", "1,2"]
    assert main([*search, "--strengths", "0.5,1", "--plots", str(plots), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert len(found["cells"]) == 4 and (plots / "heatmap.png").is_file() and (plots / "pareto.png").is_file()

    assert main(["steer", "export-gguf", str(out), str(tmp_path / "v.gguf")]) == 0
    assert main(["steer", "import-gguf", str(tmp_path / "v.gguf"), "--out", str(tmp_path / "back")]) == 0
    back = SteeringVector.load(tmp_path / "back")
    assert torch.equal(
        back.directions["blocks.2.hook_resid_post"], SteeringVector.load(out).directions["blocks.2.hook_resid_post"]
    )
    assert back.meta["model_type"] == "llama"


def _fails(argv, capsys, match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mechscope: error:")]
    assert len(lines) == 1 and match in lines[0] and "Traceback" not in err, err


def test_bad_input_is_one_line_and_writes_nothing(pycode, pairs_file, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    out = tmp_path / "never"
    _fails(["steer", "vector", "zoo:pycode", "--pairs", str(empty), "--out", str(out)], capsys, "no pairs")
    _fails(["steer", "vector", "zoo:pycode", "--pairs", str(pairs_file), "--sites", "blocks.9.hook_resid_post",
            "--out", str(out)], capsys, "this model has 4 layers")  # fmt: skip
    misaligned = tmp_path / "misaligned.csv"
    misaligned.write_text("positive,negative\nx = 1,x = 1 + 2 + 3\n")
    _fails(["steer", "vector", "zoo:pycode", "--pairs", str(misaligned), "--read", "-2", "--out", str(out)],
           capsys, "read different places")  # fmt: skip
    assert not out.exists()
    other = SteeringVector({"blocks.1.hook_resid_post": torch.ones(64)}, model_name="gpt2-tiny").save(tmp_path / "w")
    _fails(["steer", "generate", "zoo:pycode", "x", "--vector", str(other)], capsys, "d_model=64")
    with pytest.raises(SystemExit):  # argparse: "expected a finite number"
        main(["steer", "generate", "zoo:pycode", "x", "--vector", str(other), "--strength", "nan"])
    assert "finite" in capsys.readouterr().err
    with pytest.raises(MechscopeError, match="finite"):
        steering.vector_edits(SteeringVector.load(other), float("nan"))
    _fails(["steer", "export-gguf", str(tmp_path / "nothing"), str(tmp_path / "x.gguf")], capsys, "no steering vector")
    assert not (tmp_path / "x.gguf").exists()


def test_report_section(pycode, tmp_path):
    from mechscope.report import steering as report_steering

    v = steering.contrast(pycode, PAIRS, "blocks.2.hook_resid_post", progress=False).save(tmp_path / "v")
    run = pycode.run("def f(x):")
    page = report_steering.section(pycode, run, vector_dir=v)
    assert (
        "Steering vector" in page and "blocks.2.hook_resid_post" in page and page.count("<tr>") == 7
    )  # card: 2 rows; generations: header + 4
    assert "data:image/png;base64" in page
    assert report_steering.section(pycode, None, vector_dir=v).count("<img") == 0
    assert report_steering.section(pycode, run, vector_dir=None) == ""
