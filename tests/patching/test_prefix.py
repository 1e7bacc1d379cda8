"""Prefix sharing in patching sweeps (patching/prefix.py): running the positions before the
first differing token once, into a KV cache, gives the same scores as whole runs (<= 1e-5),
on tiny models of each family and on zoo:pycode; it steps aside where it would not be exact."""

import pytest
import torch

import mechscope as ms
import mechscope.patching.prefix as prefix_module
from mechscope.patching import Task, logit_diff, sweep
from mechscope.patching.metrics import Metric
from mechscope.patching.prefix import multiples, shared_prefix
from tests.conftest import requires_pycode
from tests.models.tiny import tiny_model

KINDS = ["resid", "attn", "mlp", "heads", "heads-pos"]


def _task(batch=3, length=10, first=4, pad=False, vocab=97, seed=0):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, vocab, (batch, length), generator=gen)
    corrupt = clean.clone()
    corrupt[:, first : first + 2] = torch.randint(1, vocab, (batch, 2), generator=gen)
    mask = None
    if pad:  # right padding: the last row is two tokens shorter
        mask = torch.ones_like(clean)
        mask[-1, -2:] = 0
    answers, wrong = torch.randint(0, vocab, (2, batch), generator=gen)
    return Task(clean, corrupt, answers, wrong, mask=mask)


@pytest.fixture
def forwards(monkeypatch):
    """Counts the suffix-only forwards (the prefix really shared)."""
    calls = []
    original = prefix_module.PastPrefix._hook

    def spy(self, *args, **kwargs):
        calls.append(self.state.length)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(prefix_module.PastPrefix, "_hook", spy)
    return calls


def _both(model, task, metric, kind, direction="denoise"):
    shared = sweep(model, task, metric, sweep=kind, direction=direction, batch_size=64)
    whole = sweep(model, task, metric, sweep=kind, direction=direction, batch_size=64, prefix=False)
    return shared, whole


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_shared_prefix_equals_whole_runs_on_every_sweep(family, forwards):
    model, task = tiny_model(family), _task(pad=family == "llama")
    metric = logit_diff(task)
    full = Metric(metric.fn, metric.name)  # reads full logits: the prefix's logits are put back
    for kind in KINDS:
        for m in (metric, full):
            for direction in ("denoise", "noise"):
                shared, whole = _both(model, task, m, kind, direction)
                torch.testing.assert_close(shared.patched, whole.patched, rtol=0, atol=1e-5)
                torch.testing.assert_close(shared.scores, whole.scores, rtol=0, atol=1e-4)
    assert forwards and set(forwards) == {4}  # the first differing token is at 4


def test_where_it_would_not_be_exact_it_runs_whole(forwards):
    # gemma2 interleaves sliding-window layers: its cache is not shared
    model, task = tiny_model("gemma2"), _task()
    shared, whole = _both(model, task, logit_diff(task), "heads")
    torch.testing.assert_close(shared.patched, whole.patched, rtol=0, atol=1e-5)
    assert not forwards
    # edits held by model.edit have absolute positions: whole runs
    model = tiny_model("llama")
    with model.edit(ms.edits.zero("blocks.0.hook_mlp_out", positions=[6])):
        shared, whole = _both(model, task, logit_diff(task), "resid")
    torch.testing.assert_close(shared.patched, whole.patched, rtol=0, atol=1e-5)
    assert not forwards


def test_the_prefix_stops_at_the_first_difference_the_shortest_row_and_the_read_position():
    clean = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    corrupt = clean.clone()
    corrupt[1, 4] = 9
    mask = torch.ones_like(clean)
    same = {"s": torch.zeros(2, 6, 3)}
    assert shared_prefix(clean, corrupt, mask, same, same, ["s"], None) == 4
    mask[0, 3:] = 0
    assert shared_prefix(clean, corrupt, mask, same, same, ["s"], None) == 3
    assert shared_prefix(clean, corrupt, torch.ones_like(clean), same, same, ["s"], torch.tensor([5, 2])) == 2
    other = {"s": same["s"].clone()}
    other["s"][0, 1, 0] = 1e-3  # a source that differs inside the prefix: nothing shared
    assert shared_prefix(clean, corrupt, torch.ones_like(clean), other, same, ["s"], None) == 0
    assert shared_prefix(clean, clean, torch.ones_like(clean), same, same, ["s"], None) == 5  # one token runs


def test_cache_rows_follow_the_copies_joining_the_batch():
    assert multiples(None, 3, 4) == [3, 3, 3, 3]
    # copies join at blocks 1 (2 of them) and 3 (1): prompt rows ride along until the last join
    assert multiples({1: 2, 3: 1}, 1, 5) == [1, 3, 3, 3, 3]


@requires_pycode
def test_shared_prefix_equals_whole_runs_on_pycode(forwards):
    model = ms.load("zoo:pycode")
    clean = ["def add(a, b):\n    return a +", "def mul(x, y):\n    return x *", "def sub(p, q):\n    return p -"]
    corrupt = ["def add(a, c):\n    return a +", "def mul(x, z):\n    return x *", "def sub(p, r):\n    return p -"]
    task = Task.from_prompts(model, clean, corrupt, [" b", " y", " q"], [" c", " z", " r"])
    metric = logit_diff(task)
    for kind in ("resid", "heads", "heads-pos"):
        shared, whole = _both(model, task, metric, kind)
        torch.testing.assert_close(shared.patched, whole.patched, rtol=0, atol=1e-5)
    assert forwards and min(forwards) >= 4
