"""Bad input gives a MechscopeError that says what to do; the commands print one line
and exit 2. Commands are tested through parsers built from their configure_* functions."""

import argparse
import json

import pytest
import torch

import mechscope as ms
from mechscope.commands import patching as cmd
from mechscope.errors import MechscopeError
from mechscope.patching import Task, as_metric, causal_trace, logit_diff, sweep
from tests.conftest import requires_pycode
from tests.models.tiny import tiny_model


def test_task_errors_name_the_problem():
    with pytest.raises(MechscopeError, match="empty"):
        Task(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long), torch.zeros(0))
    with pytest.raises(MechscopeError, match=r"pair 1: .* is 3 tokens .* is 2"):
        Task.from_tokens([[1, 2], [3, 4, 5]], [[1, 2], [3, 4]], [1, 2])
    with pytest.raises(MechscopeError, match="2 answers for 1 prompts"):
        Task.from_tokens([[1, 2]], [[1, 3]], [1, 2])
    task = Task.from_tokens([[1, 2]], [[1, 3]], [4])
    with pytest.raises(MechscopeError, match="wrong tokens"):
        logit_diff(task)


def test_nan_metric_raises_with_its_name():
    model = tiny_model("llama")
    task = Task.from_tokens([[1, 2, 3]], [[1, 5, 3]], [4], [6])

    def broken(logits):
        return logits.sum() * float("nan")

    with pytest.raises(MechscopeError, match="metric 'broken' returned nan"):
        sweep(model, task, broken)
    with pytest.raises(MechscopeError, match="one number"):
        as_metric(lambda logits: logits[:, -1, 0])(torch.zeros(2, 3, 5))


def test_subject_not_in_prompt():
    model = tiny_model("gpt2")
    with pytest.raises(MechscopeError, match="no tokenizer"):
        causal_trace(model, torch.tensor([1, 2, 3]), "cat")
    with pytest.raises(MechscopeError, match="positions"):
        causal_trace(model, torch.tensor([1, 2, 3]), [7])


@requires_pycode
def test_text_task_errors():
    model = ms.load("zoo:pycode")
    with pytest.raises(MechscopeError, match=r"pair 0: the clean prompt 'x = 1' is \d+ tokens but the corrupted"):
        Task.from_prompts(model, ["x = 1"], ["some_long_name = 1"], [" "])
    with pytest.raises(MechscopeError, match=r"answer 'hello world' is \d+ tokens .* not one"):
        Task.from_prompts(model, ["x = 1"], ["y = 1"], ["hello world"])
    with pytest.raises(MechscopeError, match="differ in length"):
        Task.from_prompts(model, ["x = 1", "y = 2"], ["y = 1"], [" "])
    with pytest.raises(MechscopeError, match="is not in the prompt"):
        causal_trace(model, "import os", "numpy")


def _parse(configure, argv):
    return configure(argparse.ArgumentParser()).parse_args(argv)


def test_patch_command_json_and_bad_file(tmp_path, capsys):
    good = tmp_path / "task.json"
    clean = [[0, 5, 9, 12, 5, 9], [0, 7, 3, 20, 7, 3]]
    good.write_text(
        json.dumps(
            {
                "clean": clean,
                "corrupt": [[0, 6, 8, 12, 5, 9], [0, 8, 4, 20, 7, 3]],
                "answers": [12, 20],
                "wrong": [1, 2],
            }
        )
    )
    args = _parse(
        cmd.configure_patch,
        ["zoo:induction", str(good), "--sweep", "heads", "--attribution", "--json", "--plots", str(tmp_path / "plots")],
    )
    assert cmd.execute_patch(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["exact"]) == 2 and len(out["exact"][0]) == 4 and -1 <= out["agreement"]["pearson"] <= 1
    assert len(out["plots"]) == 2
    scores = []
    for flag in ([], ["--no-prefix"]):  # prefix sharing (the default) changes no score
        assert cmd.execute_patch(_parse(cmd.configure_patch, ["zoo:induction", str(good), "--json", *flag])) == 0
        scores.append(torch.tensor(json.loads(capsys.readouterr().out)["exact"]))
    torch.testing.assert_close(scores[0], scores[1], atol=1e-5, rtol=0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"clean": [[0, 1, 2]], "corrupt": [[0, 1]], "answers": [3]}))
    assert cmd.execute_patch(_parse(cmd.configure_patch, ["zoo:induction", str(bad)])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pair 0" in err[0] and "same length" in err[0]
    assert cmd.execute_patch(_parse(cmd.configure_patch, ["zoo:induction", str(tmp_path / "none.yaml")])) == 2


@requires_pycode
def test_trace_command(tmp_path, capsys):
    args = _parse(
        cmd.configure_trace,
        ["zoo:pycode", "import numpy as np", "--subject", "numpy", "--samples", "2", "--window", "2", "--json"],
    )
    assert cmd.execute_trace(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["subject_positions"] and 0 <= out["corrupt_prob"] <= 1 and len(out["resid"]) == 4
    args = _parse(cmd.configure_trace, ["zoo:pycode", "import os", "--subject", "numpy"])
    assert cmd.execute_trace(args) == 2
    assert "is not in the prompt" in capsys.readouterr().err


def test_report_section_builds_a_heatmap_or_skips():
    from mechscope.report.patching import section

    model = tiny_model("llama")
    run = model.run(torch.tensor([[3, 9, 14, 2, 7]]))
    assert "<img" in section(model, run)
    assert "Skipped" in section(model, model.run(torch.tensor([[3, 9]])))
    assert section(model, None) == ""


def test_cli_task_files_and_counts(tmp_path, capsys):
    from mechscope.cli import main

    broken = tmp_path / "broken.yaml"
    broken.write_text('clean: ["a b"\ncorrupt: [\n')
    good = tmp_path / "task.json"
    good.write_text(json.dumps({"clean": [[0, 5, 9, 12, 5, 9]], "corrupt": [[0, 6, 8, 12, 5, 9]], "answers": [12]}))
    for argv, text in [
        ([str(broken)], "is not valid YAML at line 2, column 1"),
        ([str(tmp_path)], "is a folder"),
        ([str(good), "--batch-size", "0"], "batch_size must be at least 1"),
    ]:
        assert main(["patch", "zoo:induction", *argv, "--json"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mechscope: error:") and "\n" not in err and text in err, err
    with pytest.raises(SystemExit) as exit_:  # argparse: before the sweep
        main(["patch", "zoo:induction", str(good), "--top", "-2"])
    assert exit_.value.code == 2 and "expected a whole number, 0 or more, got '-2'" in capsys.readouterr().err
