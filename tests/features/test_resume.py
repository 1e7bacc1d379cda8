"""A build killed (SIGKILL) mid-way — between checkpoints, or while writing one — and run
again ends with the same store as a build never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mechscope import features
from mechscope.errors import MechscopeError
from tests.conftest import requires_pycode

from .helpers import CFG, assert_same_store, corpus_tokens, pycode, texts
from .test_invariants import _coder

pytestmark = requires_pycode
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import importlib
    from mechscope import features, io
    from mechscope.features import accumulate
    from tests.features.helpers import CFG, pycode
    from tests.features.test_invariants import _coder

    where, after = sys.argv[2], int(sys.argv[3])
    calls = {"update": 0, "write": 0}
    if where == "update":
        original = accumulate.Accumulator.update
        def update(self, *args):
            original(self, *args)
            calls["update"] += 1
            if calls["update"] == after:
                os.kill(os.getpid(), signal.SIGKILL)
        accumulate.Accumulator.update = update
    else:  # killed while the state file is being written (its temporary file exists, not yet renamed)
        original = io.write_tensors
        def write_tensors(path, tensors, metadata=None, durable=False):
            calls["write"] += 1
            if calls["write"] == after:
                (path.parent / ("." + path.name + ".killed00.tmp")).write_bytes(b"partial")
                os.kill(os.getpid(), signal.SIGKILL)
            return original(path, tensors, metadata=metadata, durable=durable)
        importlib.import_module("mechscope.features.build").io.write_tensors = write_tensors
    tokens = torch.load(sys.argv[4], weights_only=True)
    features.build(pycode(), _coder(), tokens, sys.argv[1], cfg=CFG)
    """
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model = pycode()
    tokens = corpus_tokens(model, texts())
    folder = tmp_path_factory.mktemp("ref") / "store"
    features.build(model, _coder(), tokens, folder, cfg=CFG)
    return tokens, folder


@pytest.mark.parametrize("where,after", [("update", 3), pytest.param("write", 2, marks=pytest.mark.slow)])
def test_killed_build_resumes_to_the_same_store(reference, tmp_path, where, after):
    tokens, ref = reference
    path = tmp_path / "tokens.pt"
    torch.save(tokens, path)
    out = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), where, str(after), str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with pytest.raises(MechscopeError, match="unfinished"):
        features.open(out)
    store = features.build(pycode(), _coder(), tokens, out, cfg=CFG)
    assert store.info()["n_tokens"] == tokens.numel()
    assert_same_store(ref, out)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
