"""Replacing a model folder: a kill at any step leaves a complete folder at the path,
and the next read or write puts an interrupted replacement right."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mechscope as ms
from mechscope.folders import recover_folder, replace_folder, staging_folder
from mechscope.zoo.storage import save_module_folder

KWARGS = {"channels1": 4, "channels2": 4, "n_classes": 10}

# A child that saves a new model over DIR and is killed (os._exit, no clean-up) at the
# n-th call of the given function: after building, after moving the old folder aside, ...
CHILD = textwrap.dedent("""
    import os, shutil, sys, torch
    from mechscope.zoo.digits import DigitsCNN
    from mechscope.zoo import storage
    from mechscope import folders
    target, fn, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
    module = {"replace": os, "rmtree": shutil}[fn]
    real, calls = getattr(module, fn), []
    def dying(*args, **kwargs):
        calls.append(args)
        if len(calls) == nth:
            os._exit(9)
        return real(*args, **kwargs)
    setattr(module, fn, dying)
    torch.manual_seed(1)
    storage.save_module_folder(DigitsCNN(4, 4, 10), {"channels1": 4, "channels2": 4, "n_classes": 10}, target)
""")


def _model_weights(path):
    return ms.load(str(path)).hf.fc.weight.detach().clone()


@pytest.mark.parametrize("fn, nth", [("replace", 1), ("replace", 2), ("rmtree", 2), ("rmtree", 3)])
def test_a_kill_at_each_step_of_a_replacement_leaves_a_loadable_folder(tmp_path, fn, nth):
    from mechscope.zoo.digits import DigitsCNN

    torch.manual_seed(0)
    target = tmp_path / "model"
    save_module_folder(DigitsCNN(**KWARGS), KWARGS, target)
    old = _model_weights(target)
    torch.manual_seed(1)
    new = DigitsCNN(**KWARGS).fc.weight.detach()
    done = subprocess.run([sys.executable, "-c", CHILD, str(target), fn, str(nth)], capture_output=True, text=True)
    assert done.returncode in (0, 9), done.stderr
    loaded = _model_weights(target)  # loading recovers a folder left aside
    assert torch.equal(loaded, old) or torch.equal(loaded, new)
    assert [p.name for p in tmp_path.iterdir()] == ["model"], "leftover staging or aside folders"


def test_replace_folder_moves_the_old_aside_then_the_new_in(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "f").write_text("old")
    staging = staging_folder(target)
    (staging / "f").write_text("new")
    replace_folder(staging, target)
    assert (target / "f").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out"]


def test_recovery_puts_back_an_aside_folder_of_a_dead_writer_only(tmp_path):
    target = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / f".out.old-{dead.stdout.strip()}"
    aside.mkdir()
    (aside / "f").write_text("old")
    live = tmp_path / f".out.tmp-{os.getppid()}"  # a staging folder of a process that still runs
    live.mkdir()
    recover_folder(target)
    assert (target / "f").read_text() == "old" and not aside.exists() and live.exists()
