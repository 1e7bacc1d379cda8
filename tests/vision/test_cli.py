"""`mechscope attribute` and `mechscope sanity`: the library's results, printed, as JSON and as
figures; bad input is one line (exit 2); a failing sanity check exits 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechscope.cli import main
from mechscope.zoo import digits
from tests.conftest import requires_pycode


def test_attribute_ig_json_and_plots(tmp_path, capsys):
    code = main(["attribute", "zoo:digits", "digits:0-3", "--method", "ig", "--json", "--plots", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["method"] == "ig" and len(out["inputs"]) == 4
    assert max(row["completeness"] for row in out["inputs"]) <= 1e-2
    assert np.array(out["inputs"][0]["map"]).shape == (8, 8)
    assert (tmp_path / "attribution_ig.png").read_bytes()[:4] == b"\x89PNG"


def test_attribute_reads_npy_and_saves(tmp_path, capsys):
    images = digits.data(0).x_test[:2]
    np.save(tmp_path / "x.npy", images.numpy())
    code = main(["attribute", "zoo:vit-digits", str(tmp_path / "x.npy"), "--method", "rollout",
                 "--save", str(tmp_path / "r")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "rollout on zoo:vit-digits" in out and "input 1: target" in out
    from mechscope.vision import Attribution

    saved = Attribution.load(tmp_path / "r")
    assert saved.maps.shape == (2, 8, 8) and torch.equal(saved.inputs, images)


def test_sanity_passes_and_fails(tmp_path, capsys):
    code = main(["sanity", "zoo:digits", "--inputs", "digits:0-3", "--method", "gradcam", "--plots", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "PASS randomisation" in out and "randomised down to conv1" in out
    assert {p.name for p in tmp_path.iterdir()} == {"sanity_gradcam_cascade.png", "sanity_gradcam_curves.png"}
    code = main(["sanity", "zoo:digits", "--inputs", "digits:0-3", "--threshold", "-1", "--no-deletion", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["passed"] is False
    assert [c["name"] for c in out["checks"]] == ["top-layer randomisation", "randomisation"]


@requires_pycode
def test_attribute_text(capsys):
    code = main(["attribute", "zoo:pycode", "def add(a, b):\n    return a +", "--method", "ig", "--token", " b"])
    out = capsys.readouterr().out
    assert code == 0 and "hook_embed" in out and "' b':" in out


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["attribute", "zoo:digits", "digits:0", "--target", "12"], "target class 12 is out of range"),
        (["attribute", "zoo:digits", "digits:999"], "the test split has 360 images"),
        (["attribute", "zoo:digits", "nothere.npy"], "no image file 'nothere.npy'"),
        (["attribute", "zoo:digits", "digits:0", "--method", "magic"], "unknown attribution method 'magic'"),
        (["sanity", "zoo:digits", "--labels", "3"], "at least 10 training images"),
    ],
)
def test_bad_input_is_one_line(argv, text, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mechscope: error:") and "\n" not in err and text in err, err


def test_wrong_channels_from_a_file_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "rgb.npy", np.zeros((2, 3, 8, 8), dtype=np.float32))
    assert main(["attribute", "zoo:digits", str(tmp_path / "rgb.npy")]) == 2
    assert "reads 1-channel images, got 3 channels" in capsys.readouterr().err
