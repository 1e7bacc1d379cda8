"""What a new user meets at the command line (issue 17 §5, issue 25 items 5 and 6): snapshots
load everywhere, help shows defaults, the CLI starts without torch, readable output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import mechscope as ms
from mechscope.cli import command_index, main, parser
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


def _parsers(p):
    """Every parser of the command tree, subcommands of subcommands included."""
    yield p
    for action in p._actions:
        for child in getattr(action, "choices", None).values() if isinstance(action.choices, dict) else ():
            yield from _parsers(child)


def test_every_help_shows_defaults(capsys):
    from mechscope.commands.arguments import Formatter
    tree = list(_parsers(parser()))
    assert len(tree) > 25 and all(p.formatter_class is Formatter for p in tree)
    for argv, shown in [(["sae", "train", "--help"], ["(default: 20000000)", "(default: topk)", "(default: 100)"]),
                        (["lens", "train", "--help"], ["(default: 250)", "(default: sgd)"]),
                        (["sae", "meta", "--help"], ["(default: 200)"])]:
        with pytest.raises(SystemExit) as done:
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert done.value.code == 0 and all(s in text for s in shown), (argv, text)
        assert "(default: None)" not in text and "(default: False)" not in text


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"mechscope {ms.__version__}"


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout


def test_help_and_a_mistyped_layer_do_not_import_torch():
    """`mechscope --help` lists commands without importing them; a site whose layer the model
    lacks fails from config.json alone, before torch (seconds) loads."""
    out = _python("import sys\nfrom mechscope.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
                  "    print(e.code, 'torch' in sys.modules, 'mechscope.commands.sae' in sys.modules)")
    assert out.split()[-3:] == ["0", "False", "False"]
    if (WEIGHTS / "pycode" / "config.json").is_file():
        out = _python("import sys\nfrom mechscope.cli import main\n"
                      "print(main(['run', 'zoo:pycode', 'x', '--record', 'blocks.99.hook_resid_post']), 'torch' in sys.modules)")
        assert out.split()[-2:] == ["2", "False"]


def test_global_options_before_lens_train(tmp_path, capsys):
    assert command_index(["-v", "--device", "cpu", "--dtype=float32", "lens", "train", "m"]) == 4
    assert command_index(["--dev", "cpu", "run"]) == 2 and command_index(["-v"]) is None
    from tests.lens.helpers import save_worded
    model = str(save_worded(tmp_path / "model"))
    for options in (["-v"], ["--device", "cpu"], ["--dtype", "float32", "-v"]):
        # parsed as `lens train` (not as `lens MODEL=train PROMPT`): the missing corpus is the error
        assert main([*options, "lens", "train", model, "--data", str(tmp_path / "none.txt"), "--steps", "1"]) == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments" not in err and "none.txt" in err, err


def test_zoo_info_is_a_summary_and_json_the_whole_card(capsys):
    from mechscope import zoo
    assert main(["zoo", "info", "induction"]) == 0
    text = capsys.readouterr().out
    card = zoo.card("induction")
    assert len(text.splitlines()) < 80 < len(json.dumps(card, indent=2).splitlines())
    assert "second_copy_loss" in text and "(241 entries: see --json)" in text and "--json` prints" in text
    assert main(["zoo", "info", "induction", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == card
