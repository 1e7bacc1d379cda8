"""What a new user meets at the command line (issue 17 §5, issue 25 items 5 and 6): snapshots
load everywhere, help shows defaults, the CLI starts without torch, readable output."""

from __future__ import annotations

import json

import pytest
import torch

import mechscope as ms
from mechscope.cli import main
from mechscope.zoo import WEIGHTS

requires_modadd = pytest.mark.skipif(not (WEIGHTS / "modadd" / "snapshots").is_dir(),
                                     reason="zoo:modadd snapshots are not shipped in this checkout")


@requires_modadd
def test_a_modadd_snapshot_loads_everywhere(capsys):
    from mechscope.zoo import modadd, zoo_path
    steps = [step for step, _ in modadd.load_snapshots(zoo_path("modadd"))]
    snapshot = ms.load(f"zoo:modadd@{steps[1]}", dtype="float64")
    expected = dict(modadd.load_snapshots(zoo_path("modadd")))[steps[1]].state_dict()
    state = snapshot.hf.state_dict()
    assert snapshot.name == f"zoo:modadd@{steps[1]}" and state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k].double()) for k in state)      # the snapshot's weights, as asked
    final = ms.load("zoo:modadd").hf.state_dict()
    assert not all(torch.equal(final[k].double(), state[k]) for k in state)     # not the final model's
    assert main(["info", f"zoo:modadd@{steps[1]}", "--json"]) == 0               # a command outside crosscoder
    assert json.loads(capsys.readouterr().out)["name"] == f"zoo:modadd@{steps[1]}"
    for name, text in [("zoo:modadd@7", "no snapshot at step '7': choose one of 0,"),
                       ("zoo:modadd@x", "no snapshot at step 'x'"),
                       ("zoo:induction@3", "keeps no training snapshots")]:
        with pytest.raises(ms.MechscopeError, match=text):
            ms.load(name)
