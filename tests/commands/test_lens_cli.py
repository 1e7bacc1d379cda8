"""`mechscope lens` and `mechscope dla`, configured on a fresh argparse parser and run
through `execute`, on a tiny text model saved to a folder (loaded the way users do)."""

from __future__ import annotations

import argparse
import json

import pytest

import mechscope as ms
from mechscope.commands import dla as dla_cmd
from mechscope.commands import lens as lens_cmd
from mechscope.lens import tuned

from ..lens.helpers import save_worded


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(save_worded(tmp_path_factory.mktemp("worded")))


def parse(command, argv: list[str]) -> argparse.Namespace:
    return command.configure(argparse.ArgumentParser()).parse_args(argv)


def test_lens_json_with_targets_and_plot(folder, tmp_path, capsys):
    plot = tmp_path / "lens.png"
    args = parse(
        lens_cmd,
        [
            folder,
            "the cat sat",
            "--targets",
            "the",
            "cat",
            "--positions",
            "0,-1",
            "--k",
            "3",
            "--json",
            "--plot",
            str(plot),
            "--save",
            str(tmp_path / "saved"),
        ],
    )
    assert lens_cmd.execute(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layers"] == ["embed", "L0 mid", "L0", "L1 mid", "L1"] and out["tokens"] == ["[CLS]", "[SEP]"]
    assert len(out["top"][0][0]) == 3 and set(out["targets"]) == {"the", "cat"}
    assert len(out["targets"]["cat"]["prob"]) == 5 and out["kl"][-1] == [0.0, 0.0]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert ms.lens.LogitLens.load(tmp_path / "saved").targets == ["the", "cat"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lens.png", "saved"]  # no temporary files left


def test_lens_text_table(folder, capsys):
    assert (
        lens_cmd.execute(parse(lens_cmd, [folder, "hello there", "--no-mid", "--layers", "-1", "--targets", "hello"]))
        == 0
    )
    text = capsys.readouterr().out
    assert "logit lens of" in text and "p('hello')" in text
    assert "     L1 " in text and "embed" not in text


def test_lens_errors(folder):
    with pytest.raises(ms.MechscopeError, match=r"target 'hello world' is 2 tokens \['hello', 'world'\]"):
        lens_cmd.execute(parse(lens_cmd, [folder, "hi", "--targets", "hello world"]))
    with pytest.raises(ms.MechscopeError, match="layer 4 is out of range"):
        lens_cmd.execute(parse(lens_cmd, [folder, "hi", "--layers", "0,4"]))
    with pytest.raises(SystemExit):
        parse(lens_cmd, [folder, "hi", "--positions", "last"])
    with pytest.raises(ms.MechscopeError) as missing:  # mechscope.lens.tuned is part of the package
        lens_cmd.execute(parse(lens_cmd, [folder, "hi", "--tuned", "nowhere"]))
    assert "nowhere" in str(missing.value) and "needs mechscope.lens.tuned" not in str(missing.value)


def test_dla_json_and_text(folder, tmp_path, capsys):
    plot = tmp_path / "dla.png"
    args = parse(
        dla_cmd,
        [folder, "the cat sat on the", "--target", "mat", "--vs", "dog", "--top", "4", "--json", "--plot", str(plot)],
    )
    assert dla_cmd.execute(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "logit 'mat' - logit 'dog'" and len(out["top"]) == 4
    assert abs(out["sum"] - out["logit"]) < 1e-4 and abs(out["logit"] - out["output_logit"]) < 1e-4
    assert abs(sum(out["components"].values()) - out["logit"]) < 1e-4
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert dla_cmd.execute(parse(dla_cmd, [folder, "the cat", "--target", "cat", "--position", "1"])) == 0
    text = capsys.readouterr().out
    assert "direct logit attribution of logit 'cat' at position 1" in text and "L1 mlp" in text
    with pytest.raises(ms.MechscopeError, match="is 2 tokens"):
        dla_cmd.execute(parse(dla_cmd, [folder, "the cat", "--target", "hello world"]))
    with pytest.raises(SystemExit):
        parse(dla_cmd, [folder, "the cat"])  # --target is required


def test_lens_reads_through_a_saved_tuned_lens(folder, tmp_path, capsys):
    import torch

    model = ms.load(folder)
    d, n = model.dims.d_model, model.dims.n_layers
    meta = {"model": folder, "n_layers": n, "d_model": d, "unembed_sha256": tuned.model_fingerprint(model)}
    identity = tuned.TunedLens(torch.zeros(n, d, d), torch.zeros(n, d), meta).save(tmp_path / "tuned")
    assert lens_cmd.execute(parse(lens_cmd, [folder, "the cat sat", "--tuned", str(identity), "--json"])) == 0
    through = json.loads(capsys.readouterr().out)
    assert lens_cmd.execute(parse(lens_cmd, [folder, "the cat sat", "--no-mid", "--json"])) == 0
    plain = json.loads(capsys.readouterr().out)
    assert through["lens"] == "TunedLens" and through["layers"] == ["embed", "L0", "L1"]  # no mids through a translator
    assert through["top"] == plain["top"]  # a zero tuned lens is the logit lens


def test_cli_bad_training_settings_and_lens_files_are_one_line(folder, tmp_path, capsys):
    import torch

    from mechscope.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat and the dog sat on the cat\n" * 20)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model = ms.load(folder)
    d, n = model.dims.d_model, model.dims.n_layers
    meta = {"model": folder, "n_layers": n, "d_model": d, "unembed_sha256": tuned.model_fingerprint(model)}
    lens = tuned.TunedLens(torch.zeros(n, d, d), torch.zeros(n, d), meta).save(tmp_path / "tuned")
    (lens / "translators.safetensors").write_bytes((lens / "translators.safetensors").read_bytes()[:200])
    train = [
        "lens",
        "train",
        folder,
        "--data",
        str(corpus),
        "--ctx",
        "8",
        "--steps",
        "2",
        "--batch",
        "2",
        "--no-progress",
    ]
    for argv, text in [
        ([*train, "--out", str(tmp_path / "a"), "--lr", "-1"], "got lr=-1.0"),
        ([*train, "--out", str(tmp_path / "a"), "--warmup", "-5"], "warmup_steps=-5"),
        ([*train, "--out", str(blocker / "lens")], "is a file, not a folder"),
        (["lens", folder, "the cat", "--tuned", str(lens)], "cannot read the tuned lens"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mechscope: error:") and "\n" not in err and text in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "file", "tuned"]
