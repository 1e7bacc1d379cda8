"""A feature store built on two gloo ranks (`torchrun`) equals a one-rank build of the same
corpus: every table, array and the saved state bit for bit, and every latent as FeatureStore
reads it — for batches that split evenly, that do not, and for a two-rank resumption of an
interrupted one-rank build; a refusal reaches every rank. The merge alone, on planted ties
and 2-4 ranks, equals one pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mechscope import features
from mechscope.features import BuildConfig
from mechscope.features.accumulate import Accumulator
from mechscope.features.merge import merge
from tests.conftest import requires_pycode

from .ddp_worker import UNEVEN_TOKENS
from .helpers import CFG, assert_same_store, corpus_tokens, pycode, texts
from .test_invariants import _coder

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")


class _Stop(Exception):
    pass


def _interrupted(model, coder, tokens, out: Path, after: int) -> None:
    """A one-rank build stopped after `after` batches (its last checkpoint before them stays)."""
    update = Accumulator.update
    calls = {"n": 0}

    def stopping(self, *args):
        calls["n"] += 1
        if calls["n"] > after:
            raise _Stop
        return update(self, *args)

    Accumulator.update = stopping  # type: ignore[method-assign]
    try:
        with pytest.raises(_Stop):
            features.build(model, coder, tokens, out, cfg=CFG)
    finally:
        Accumulator.update = update  # type: ignore[method-assign]


def _same_features(a: Path, b: Path) -> None:
    one, two = features.open(a), features.open(b)
    assert {**one.info(), "path": ""} == {**two.info(), "path": ""}
    assert one.dead() == two.dead()
    for latent in range(one.d_sae):
        assert one.feature(latent).to_dict() == two.feature(latent).to_dict(), latent


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The worker's three two-rank builds, and how many batches each rank ran."""
    model, coder = pycode(), _coder()
    root = tmp_path_factory.mktemp("ddp")
    tokens = corpus_tokens(model, texts())
    torch.save(tokens, root / "tokens.pt")
    _interrupted(model, coder, tokens, root / "resume", after=3)  # checkpointed after batch 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)]
    done = subprocess.run(
        [*cmd, str(root)], check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = [json.loads((root / f"counts-rank{r}.json").read_text()) for r in range(2)]
    return root, tokens, counts


@requires_pycode
@pytest.mark.slow  # two fresh interpreters loading zoo:pycode under torchrun: ~30 s on a busy 2-core machine
def test_two_ranks_equal_one_rank(two_ranks, tmp_path):
    root, tokens, counts = two_ranks
    model, coder = pycode(), _coder()
    features.build(model, coder, tokens, tmp_path / "even", cfg=CFG)
    features.build(model, coder, texts(), tmp_path / "uneven", tokens=UNEVEN_TOKENS, cfg=CFG)
    for name in ("even", "uneven", "resume"):
        assert_same_store(tmp_path / "even" if name == "resume" else tmp_path / name, root / name)
        _same_features(tmp_path / "even" if name == "resume" else tmp_path / name, root / name)
    assert features.open(root / "uneven").info()["n_tokens"] == UNEVEN_TOKENS
    # the ranks shared the model's work: 6 batches 3 + 3, 7 batches 4 + 3, the 4 left after a resume 2 + 2
    assert [(c["even"], c["uneven"], c["resume"]) for c in counts] == [(3, 4, 2), (3, 3, 2)]
    assert "another dictionary" in counts[0]["refused"] and counts[1]["refused"] == counts[0]["refused"]


def _batches(n: int, d: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random activations on a coarse grid (many equal values: ties for every top-k) and tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        b = 3 if i < n - 1 else 2
        acts = torch.relu(torch.randn(b, 16, d, generator=g) - 1.0)
        out.append(((acts * 4).round() / 4, torch.randint(0, 100, (b, 16), generator=g)))
    return out


@pytest.mark.parametrize("world", [2, 3, 4])
def test_merged_round_robin_shares_equal_one_pass(world):
    cfg = BuildConfig(ctx_len=16, batch_size=3, k=5, before=3, after=2, samples=2, co_active=3)
    d, batches = 40, _batches(11, 40)
    one = Accumulator(d, cfg)
    for acts, toks in batches:
        one.update(acts, toks)
    one.canonical()
    ranks = [Accumulator(d, cfg) for _ in range(world)]
    at = 0
    for i, (acts, toks) in enumerate(batches):  # batch i on rank i % world, at its corpus index
        ranks[i % world].update(acts, toks, at)
        at += toks.numel()
    merged = ranks[0]
    for other in ranks[1:]:
        merge(merged, other)
    assert int((one.top_val[:, 0] == one.top_val[:, 1]).sum()) > 0  # ties were there to break
    for name in Accumulator.STATE:
        assert torch.equal(getattr(merged, name), getattr(one, name)), name
