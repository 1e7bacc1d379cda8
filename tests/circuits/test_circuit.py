"""Circuit result (sub-circuits, JSON / folder round trips, dot, plot) and the `circuit` command."""

import argparse
import json

import pytest
import torch

from mechscope.circuits import Circuit, eap
from mechscope.commands import circuits as cmd
from mechscope.patching import Task
from tests.models.tiny import tiny_model


@pytest.fixture(scope="module")
def scores():
    model = tiny_model("llama")
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(1, 97, (2, 3, 6), generator=gen)
    return model, Task(clean, corrupt, [1, 2, 3], [4, 5, 6]), eap(model, Task(clean, corrupt, [1, 2, 3], [4, 5, 6]))


def test_sub_circuits_keep_the_largest_scores(scores):
    _, _, full = scores
    assert len(full) == len(full.graph.edges) and full.method == "eap"
    top = full.circuit(top=7)
    assert len(top) == 7 and top.info["top"] == 7
    assert min(abs(v) for v in top.scores.tolist()) >= sorted(full.scores.abs().tolist())[-7] - 1e-12
    cut = full.circuit(threshold=float(full.scores.abs().median()))
    assert all(abs(v) >= float(full.scores.abs().median()) for v in cut.scores.tolist())
    assert top.top(1) == full.top(1)
    assert all(n in full.graph.senders or n == "logits" or n.startswith(("a", "m")) for n in top.nodes)


def test_round_trips(scores, tmp_path):
    _, _, full = scores
    small = full.circuit(top=5)
    back = Circuit.from_json(small.to_json())
    assert back.edges == small.edges and torch.equal(back.scores, small.scores) and back.graph == small.graph
    loaded = Circuit.load(small.save(tmp_path / "c"))
    assert loaded.edges == small.edges and torch.equal(loaded.scores, small.scores) and loaded.info == small.info
    dot = small.to_dot()
    assert dot.startswith("digraph") and dot.count("->") == 5
    fig = small.plot()
    assert len(fig.axes) == 1


def test_full_circuit_is_fully_faithful(scores):
    model, task, full = scores
    assert full.faithfulness(model, task) == pytest.approx(1.0, abs=1e-4)
    for ablation in ("mean", "zero"):
        assert full.faithfulness(model, task, ablation=ablation) == pytest.approx(1.0, abs=1e-4)


def _parse(argv):
    return cmd.configure(argparse.ArgumentParser()).parse_args(argv)


def test_command_eap_and_acdc(tmp_path, capsys):
    task = tmp_path / "task.json"
    task.write_text(
        json.dumps(
            {
                "clean": [[0, 5, 6, 7, 5, 6], [0, 9, 3, 4, 9, 3]],
                "corrupt": [[0, 7, 6, 5, 5, 6], [0, 4, 3, 9, 9, 3]],
                "answers": [7, 4],
                "wrong": [5, 9],
            }
        )
    )
    assert (
        cmd.execute(
            _parse(
                [
                    "zoo:induction",
                    str(task),
                    "--top",
                    "6",
                    "--json",
                    "--plots",
                    str(tmp_path / "p"),
                    "--out",
                    str(tmp_path / "c"),
                ]
            )
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert len(out["circuit"]["edges"]) == 6 and (tmp_path / "p" / "circuit_eap.png").is_file()
    assert Circuit.load(tmp_path / "c").n_edges == 6
    assert cmd.execute(_parse(["zoo:induction", "induction", "--method", "acdc", "--threshold", "0.05"])) == 0
    assert "acdc:" in capsys.readouterr().out
    assert cmd.execute(_parse(["zoo:induction", str(task), "--method", "acdc", "--top", "3"])) == 2
    assert "--top applies" in capsys.readouterr().err
    assert cmd.execute(_parse(["zoo:induction", str(tmp_path / "missing.json")])) == 2


def test_report_section_draws_the_induction_circuit():
    import mechscope as ms
    from mechscope.report.circuits import section

    page = section(ms.load("zoo:induction"), None)
    assert "Circuit (EAP)" in page and "<img" in page and "a1.h" in page
    assert section(tiny_model("bert"), None) == ""
