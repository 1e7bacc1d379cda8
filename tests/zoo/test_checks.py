"""`mechscope zoo check`: a retrained folder's card against the shipped card's tolerances."""

from __future__ import annotations

import json

import pytest

from mechscope import zoo
from mechscope.cli import main
from mechscope.errors import MechscopeError

SHIPPED = [name for name in zoo.names() if (zoo.WEIGHTS / name / "card.json").is_file()]


def _retrained(tmp_path, name: str, edit=None):
    card = zoo.card(name)
    if edit:
        edit(card["metrics"])
    (tmp_path / "card.json").write_text(json.dumps(card))
    return tmp_path


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_card_reproduces_itself(name, tmp_path):
    checks = zoo.check(name, _retrained(tmp_path, name))
    assert checks and all(c.ok for c in checks), [c.line() for c in checks if not c.ok]


def test_a_measure_outside_its_tolerance_fails_and_the_command_says_so(tmp_path, capsys):
    def worse(metrics):  # 2 points of test accuracy lost; the card allows 1
        metrics["test_accuracy"] -= 0.02

    assert main(["zoo", "check", "digits", str(_retrained(tmp_path, "digits", worse))]) == 1
    out = capsys.readouterr().out
    assert "FAIL test_accuracy" in out and "1 of 2 measures reproduce" in out


def test_chain_attention_to_another_hop_fails(tmp_path):
    def other_hop(metrics):
        metrics["hop_attention"]["2"][2]["hop"] = 1

    failed = [c for c in zoo.check("chain", _retrained(tmp_path, "chain", other_hop)) if not c.ok]
    assert [c.metric for c in failed] == ["depth 2 layer 2 attention to hop 2"]


def test_bad_folders_are_refused(tmp_path):
    with pytest.raises(MechscopeError, match="no card.json"):
        zoo.check("digits", tmp_path)
    with pytest.raises(MechscopeError, match="shipped folder itself"):
        zoo.check("digits", zoo.WEIGHTS / "digits")
    (tmp_path / "card.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(MechscopeError, match="not a card of the current 'digits' recipe"):
        zoo.check("digits", tmp_path)


def test_cli_corrupt_card_is_one_line(tmp_path, capsys):
    from mechscope.cli import main

    (tmp_path / "card.json").write_text("{half")
    assert main(["zoo", "check", "pycode", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mechscope: error: cannot read") and "\n" not in err
