"""Shared work in batched patching: `Model.run(copies=, copy_from=, logit_positions=)` and
the sweeps built on it must give what the plain path gives (the prompts repeated, every
copy through the whole model, full logits) on every family and on the zoo models."""

import pytest
import torch

import mechscope as ms
from mechscope import edits as E
from mechscope.errors import MechscopeError
from mechscope.heads import repeated_random_tokens
from mechscope.patching import Task, answer_logit, answer_prob, logit_diff, sweep
from mechscope.patching.sweep import plan, record, run_groups
from mechscope.patching.tracing import _groups
from tests.conftest import requires_pycode
from tests.models.tiny import tiny_model

FAMILIES = ["gpt2", "neox", "neox_seq", "llama", "mistral", "qwen2", "gemma2", "toy", "toy_attn_only", "bert"]
TIGHT = dict(atol=1e-6, rtol=0)


def _ids(rows: int, padded: bool, length: int = 7):
    ids = torch.randint(1, 97, (rows, length), generator=torch.Generator().manual_seed(rows))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 5:], mask[2, 3:] = 0, 0
    return ids, mask


def _per_copy(rows: int):
    """A different edit in each copy: copy c scales the residual by c + 1."""

    def fn(x):
        scale = torch.arange(1, x.shape[0] // rows + 1, dtype=x.dtype).repeat_interleave(rows)
        return x * scale[:, None, None]

    return fn


# rows = 7 equals the sequence length: no non-batch tensor may be mistaken for a per-row one
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rows,padded", [(1, False), (3, False), (7, False), (3, True)])
def test_copies_equal_repeated_prompts(family, rows, padded):
    model = tiny_model(family)
    ids, mask = _ids(rows, padded)
    copies, layer = 3, 1
    edit = E.replace(f"blocks.{layer}.hook_resid_pre", _per_copy(rows))
    sites = [f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.attn.hook_pattern"]
    with torch.no_grad():
        plain = model.run(ids.repeat(copies, 1), attention_mask=mask.repeat(copies, 1), edits=[edit], record=sites)
        fast = model.run(ids, attention_mask=mask, edits=[edit], record=sites, copies={layer: copies})
        read = mask.sum(-1) - 1
        cut = model.run(ids, attention_mask=mask, edits=[edit], copies={layer: copies}, logit_positions=read)
    real = mask.repeat(copies, 1).bool()
    torch.testing.assert_close(fast.logits[real], plain.logits[real], **TIGHT)
    for site in sites:
        torch.testing.assert_close(fast.cache[site], plain.cache[site], **TIGHT)
    assert fast.tokens.shape == plain.tokens.shape
    rows_all = torch.arange(copies * rows)
    torch.testing.assert_close(cut.logits, plain.logits[rows_all, read.repeat(copies)], **TIGHT)


@pytest.mark.parametrize("family", FAMILIES)
def test_copies_joining_at_two_layers(family):
    # 2 copies from block 0 (the prompt rows ride along), 3 more from block 1 (they are dropped)
    model = tiny_model(family)
    ids, mask = _ids(3, True)
    edit = E.replace("blocks.1.hook_resid_pre", _per_copy(3))
    seen = []
    probe = E.replace("blocks.0.hook_resid_post", lambda x: seen.append(x.shape[0]) or x)
    with torch.no_grad():
        plain = model.run(ids.repeat(5, 1), attention_mask=mask.repeat(5, 1), edits=[edit]).logits
        fast = model.run(ids, attention_mask=mask, edits=[edit, probe], copies={0: 2, 1: 3}).logits
    real = mask.repeat(5, 1).bool()
    torch.testing.assert_close(fast[real], plain[real], **TIGHT)
    assert seen == [9]  # block 0: the 3 prompt rows and 2 copies of them


def test_copies_need_one_batch_and_a_layer():
    model = tiny_model("llama")
    ids, _ = _ids(3, False)
    with pytest.raises(MechscopeError, match="one batch"):
        model.run(ids, copies={0: 2}, batch_size=1)
    with pytest.raises(MechscopeError, match="layers 0-1"):
        model.run(ids, copies={5: 2})


def _task(rows=3, length=7, padded=False):
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(1, 97, (rows, length), generator=gen)
    corrupt = clean.clone()
    corrupt[:, 1:3] = torch.randint(1, 97, (rows, 2), generator=gen)
    if not padded:
        return Task(
            clean, corrupt, torch.randint(0, 97, (rows,), generator=gen), torch.randint(0, 97, (rows,), generator=gen)
        )
    lengths = [length, length - 2, length - 3]
    return Task.from_tokens(
        [r[:n].tolist() for r, n in zip(clean, lengths)],
        [r[:n].tolist() for r, n in zip(corrupt, lengths)],
        [5, 6, 7],
        [8, 9, 10],
    )


def _check_sweeps(model, task, metric, kinds, tol):
    for kind in kinds:
        for direction in ["denoise", "noise"]:
            fast = sweep(model, task, metric, sweep=kind, direction=direction, batch_size=40)
            plain = sweep(model, task, metric, sweep=kind, direction=direction, batch_size=40, share=False)
            torch.testing.assert_close(fast.patched, plain.patched, **tol)
            # and against one patched forward per patch, every patch run (none skipped)
            patches, *_ = plan(model, kind, task.clean.shape[1])
            clean, corrupt = record(model, task, sorted({p.site for p in patches}, key=model.table.order.__getitem__))
            source, base = (clean, task.corrupt) if direction == "denoise" else (corrupt, task.clean)
            one = run_groups(model, task, [(p,) for p in patches], source.cache, base, metric, len(task), share=False)
            every = run_groups(model, task, [(p,) for p in patches], source.cache, base, metric, 10_000)
            torch.testing.assert_close(every, one, **tol)
            torch.testing.assert_close(fast.patched.flatten(), one, **tol)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "bert"])
@pytest.mark.parametrize("padded", [False, True])
def test_shared_sweep_equals_plain_sweep(family, padded):
    model = tiny_model(family)
    task = _task(padded=padded)
    kinds = ["resid", "attn", "heads-pos"] + (["mlp"] if model.dims.d_mlp else [])
    _check_sweeps(model, task, logit_diff(task), kinds, dict(atol=1e-5, rtol=0))


def test_shared_sweep_on_zoo_induction():
    model = ms.load("zoo:induction")
    tokens = repeated_random_tokens(64, 6, 4, seed=1, prefix_token=0)
    other = repeated_random_tokens(64, 6, 4, seed=2, prefix_token=0)
    corrupt = tokens[:, :-1].clone()
    corrupt[:, 1:7] = other[:, 1:7]
    task = Task(tokens[:, :-1], corrupt, tokens[:, -1], other[:, 6])
    _check_sweeps(model, task, answer_logit(task), ["resid", "heads", "heads-pos"], dict(atol=1e-4, rtol=1e-5))


@requires_pycode
def test_shared_sweep_on_zoo_pycode():
    model = ms.load("zoo:pycode")
    task = Task.from_prompts(model, ["def add(a, b):\n    return a"], ["def add(c, d):\n    return c"], [" +"], [" -"])
    _check_sweeps(model, task, logit_diff(task), ["resid", "heads"], dict(atol=1e-4, rtol=1e-5))


def test_shared_groups_with_extra_edits_equal_plain():
    # causal tracing's shape: noise at the embeddings in every copy, windows of layers restored
    model = tiny_model("gpt2")
    tokens = torch.tensor([[5, 17, 23, 42, 8, 61, 30]]).repeat(3, 1)
    task = Task(tokens, tokens, torch.tensor([11, 11, 11]))
    noise = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(0))
    extra = [E.replace("hook_embed", lambda x: x + noise.repeat(x.shape[0] // 3, 1, 1))]
    clean = model.run(tokens, record=["blocks.*.hook_resid_post", "blocks.*.hook_mlp_out"])
    groups = [[], *_groups(2, 7, "resid", 2), *_groups(2, 7, "mlp", 2)]
    fast = run_groups(model, task, groups, clean.cache, tokens, answer_prob(task), 8, extra=extra)
    plain = run_groups(model, task, groups, clean.cache, tokens, answer_prob(task), 8, extra=extra, share=False)
    torch.testing.assert_close(fast, plain, **TIGHT)


def test_metric_without_positions_gets_full_logits():
    model = tiny_model("qwen2")
    task = _task()
    seen = []

    def last_logit(logits):  # a user metric: reads any position, declares none
        seen.append(logits.dim())
        return logits[:, -1, 0].mean()

    fast = sweep(model, task, last_logit, sweep="heads-pos")
    plain = sweep(model, task, last_logit, sweep="heads-pos", share=False)
    torch.testing.assert_close(fast.patched, plain.patched, atol=1e-5, rtol=0)
    assert set(seen) == {3}


def test_unread_last_layer_patches_run_no_forward():
    model = tiny_model("llama")
    task = _task()
    forwards = []
    with model.edit(E.replace("hook_embed", lambda x: forwards.append(x.shape[0]) or x)):
        result = sweep(model, task, logit_diff(task), sweep="heads-pos", positions=[3, 4])
    # one recording forward; the last layer's heads at positions 3-4 are never read (it reads 6)
    assert len(forwards) == 2 and forwards[1] == len(task)  # the patched copies join after the embedding
    assert torch.equal(result.patched[1], torch.full_like(result.patched[1], result.corrupt_metric))
