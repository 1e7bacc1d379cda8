"""Activation patching, attribution patching, tracing: invariants on tiny models of each
family and known results on zoo:induction."""

import pytest
import torch

import mechscope as ms
from mechscope.heads import induction_scores, previous_token_scores, repeated_random_tokens
from mechscope.patching import (
    Patch,
    Task,
    agreement,
    answer_logit,
    answer_prob,
    attribution_sweep,
    causal_trace,
    logit_diff,
    patch,
    sweep,
)
from mechscope.patching.sweep import plan, record, run_groups
from mechscope.patching.tracing import restore_all
from tests.models.tiny import tiny_model

FAMILIES = ["gpt2", "neox", "llama", "gemma2"]


def _task(vocab=97, batch=3, length=7, seed=0, same=False):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, vocab, (batch, length), generator=gen)
    corrupt = clean.clone()
    if not same:
        corrupt[:, 1:3] = torch.randint(1, vocab, (batch, 2), generator=gen)
    return Task(
        clean,
        corrupt,
        torch.randint(0, vocab, (batch,), generator=gen),
        torch.randint(0, vocab, (batch,), generator=gen),
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_patching_changes_nothing(family):
    model = tiny_model(family)
    task = _task(same=True)  # corrupt == clean: every patch writes a site's own value
    metric = logit_diff(task)
    for kind in ["resid", "attn", "mlp", "heads"]:
        exact = sweep(model, task, metric, sweep=kind)
        assert not exact.normalized
        assert torch.allclose(exact.patched, torch.full_like(exact.patched, exact.clean_metric), atol=1e-6), kind
        approx = attribution_sweep(model, task, metric, sweep=kind)
        assert approx.scores.abs().max() < 1e-6, kind
        # the sweep skips such patches; the patched forwards themselves must agree
        patches, *_ = plan(model, kind, task.clean.shape[1])
        clean, _ = record(model, task, sorted({p.site for p in patches}, key=model.table.order.__getitem__))
        forwards = run_groups(model, task, [(p,) for p in patches], clean.cache, task.corrupt, metric)
        assert torch.allclose(forwards, torch.full_like(forwards, exact.clean_metric), atol=1e-5), kind
    trace = causal_trace(model, task.clean[0], [1, 2], answer=int(task.answers[0]), noise=0.0, samples=2, window=2)
    assert torch.allclose(trace.probs, torch.full_like(trace.probs, trace.clean_prob), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_all_of_the_first_residual_restores_clean(family):
    model = tiny_model(family)
    task = _task()
    metric = logit_diff(task)
    clean, corrupt = record(model, task, [])
    m_clean = float(metric(clean.logits))
    assert abs(patch(model, task, metric, [Patch("blocks.0.hook_resid_pre")]) - m_clean) < 1e-5
    result = sweep(model, task, metric, sweep="resid", direction="noise")
    assert result.normalized and result.scores.shape == (2, 7)
    # positions before the first corrupted one carry identical values in both runs
    assert result.scores[:, 0].abs().max() < 1e-6
    noised = patch(model, task, metric, [Patch("blocks.0.hook_resid_pre")], direction="noise")
    assert abs(noised - float(metric(corrupt.logits))) < 1e-5


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_skipping_unchanged_patches_equals_running_them(direction):
    model = tiny_model("llama")
    task = _task()  # prompts differ at positions 1-2: position 0 is the same in both runs
    metric = logit_diff(task)
    for kind in ["resid", "heads-pos", "attn"]:
        result = sweep(model, task, metric, sweep=kind, direction=direction)
        patches, *_ = plan(model, kind, task.clean.shape[1])
        clean, corrupt = record(model, task, sorted({p.site for p in patches}, key=model.table.order.__getitem__))
        source, base = (clean, task.corrupt) if direction == "denoise" else (corrupt, task.clean)
        every = run_groups(model, task, [(p,) for p in patches], source.cache, base, metric)
        assert torch.allclose(result.patched.flatten(), every, atol=1e-5), kind


@pytest.mark.parametrize("kind", ["resid", "heads-pos"])
def test_batched_sweep_equals_one_patch_per_forward(kind):
    model = tiny_model("llama")
    task = _task()
    metric = logit_diff(task)
    patches, *_ = plan(model, kind, task.clean.shape[1])
    sites = sorted({p.site for p in patches}, key=model.table.order.__getitem__)
    clean, _ = record(model, task, sites)
    groups = [(p,) for p in patches]
    batched = run_groups(model, task, groups, clean.cache, task.corrupt, metric, batch_size=10_000)
    naive = run_groups(model, task, groups, clean.cache, task.corrupt, metric, batch_size=len(task))
    assert torch.allclose(batched, naive, atol=1e-5)


def test_attribution_is_exact_where_the_metric_is_linear_in_the_site():
    # attention-only, norm-free toy: the last layer's attention output (and each of its
    # heads' z) reaches the logits linearly, so the first-order estimate is exact there
    model = tiny_model("toy_attn_only")
    task = _task(batch=4, length=6)
    metric = logit_diff(task)
    last = model.dims.n_layers - 1
    for kind in ["attn", "heads", "heads-pos"]:
        for direction in ["denoise", "noise"]:
            exact = sweep(model, task, metric, sweep=kind, direction=direction)
            approx = attribution_sweep(model, task, metric, sweep=kind, direction=direction)
            assert torch.allclose(exact.patched[last], approx.patched[last], atol=1e-4), (kind, direction)


@pytest.fixture(scope="module")
def induction():
    model = ms.load("zoo:induction")
    tokens = repeated_random_tokens(64, 12, 16, seed=1, prefix_token=0)
    other = repeated_random_tokens(64, 12, 16, seed=2, prefix_token=0)
    clean = tokens[:, :-1]
    corrupt = clean.clone()
    corrupt[:, 1:13] = other[:, 1:13]  # first copy replaced: nothing left to induct from
    return model, tokens, Task(clean, corrupt, tokens[:, -1], other[:, 12])


def test_attribution_agrees_with_exact_head_patching_on_induction(induction):
    model, _, task = induction
    metric = answer_logit(task)
    for direction in ["denoise", "noise"]:
        exact = sweep(model, task, metric, sweep="heads", direction=direction)
        approx = attribution_sweep(model, task, metric, sweep="heads", direction=direction)
        found = agreement(exact, approx)
        # measured: r = 0.99999 (denoise), 0.965 (noise); sign agreement 1.0
        assert found.pearson >= 0.9 and found.sign >= 0.85, (direction, found)


def test_head_sweep_finds_the_induction_circuit(induction):
    model, tokens, task = induction
    inductive = induction_scores(model, tokens).scores[1].argmax().item()
    previous = previous_token_scores(model, tokens).scores[0]
    result = sweep(model, task, answer_logit(task), sweep="heads", direction="noise")
    (top, score), *_ = result.top(1)
    assert (top["layer"], top["head"]) == (1, inductive) and score > 0.9
    layer0 = result.scores[0]
    assert previous[layer0.argmax()] > 0.9  # the largest layer-0 effect is a previous-token head
    others = torch.cat([result.scores[1, :inductive], result.scores[1, inductive + 1 :]])
    assert layer0.max() > 3 * others.abs().max()


def test_causal_tracing_noises_only_the_subject_and_restoring_all_is_exact():
    model = tiny_model("gpt2")
    tokens = torch.tensor([[5, 17, 23, 42, 8, 61, 30]])
    trace = causal_trace(model, tokens, [3, 4], answer=11, noise=20.0, samples=3, window=2)
    assert trace.probs.shape == (3, 2, 7) and trace.subject == [3, 4]
    # states before the subject are untouched by the noise: restoring them does nothing
    assert torch.allclose(trace.probs[:, :, :3], torch.full_like(trace.probs[:, :, :3], trace.corrupt_prob), atol=1e-6)
    # the last layer's output at the last position is all the logits read
    assert abs(float(trace.probs[0, -1, -1]) - trace.clean_prob) < 1e-6
    assert abs(trace.corrupt_prob - trace.clean_prob) > 1e-6  # random weights: small but far above float error
    all_resid = [f"blocks.{layer}.hook_resid_post" for layer in range(2)]
    noised, restored = restore_all(model, tokens, [3, 4], 11, noise=20.0, samples=3, sites=all_resid)
    assert abs(restored - trace.clean_prob) < 1e-6 and abs(noised - trace.clean_prob) > 1e-6


def test_results_save_load_and_plot(tmp_path):
    model = tiny_model("neox")
    task = _task()
    result = sweep(model, task, answer_prob(task), sweep="heads-pos")
    back = type(result).load(result.save(tmp_path / "sweep"))
    assert torch.equal(back.scores, result.scores) and back.axes == ["layer", "head", "pos"]
    assert len(result.top(3)) == 3 and result.plot() is not None
    trace = causal_trace(model, task.clean[0], [1], samples=2, window=2)
    assert torch.equal(type(trace).load(trace.save(tmp_path / "trace")).probs, trace.probs) and trace.plot()


def test_path_patching_and_ablations_on_induction(induction):
    from mechscope.patching import ablate, path_patch

    model, _, task = induction
    metric = answer_logit(task)
    heads = sweep(model, task, metric, sweep="heads", direction="noise")
    # a last-layer head reaches the logits only directly: its path effect is its whole patching effect
    direct = path_patch(model, task, metric, [(1, 2)])
    assert abs(direct.patched_metric - float(heads.patched[1, 2])) < 1e-4
    # the previous-token head feeds the induction head's keys (K-composition), not its queries
    gap = direct.clean_metric - direct.corrupt_metric
    via_k = path_patch(model, task, metric, [(0, 0)], [(1, 2, "k")])
    via_q = path_patch(model, task, metric, [(0, 0)], [(1, 2, "q")])
    assert -via_k.change > 0.2 * gap and abs(via_q.change) < 0.02 * gap
    zeroed = ablate(model, task, metric, "blocks.1.attn.hook_z", heads=2)
    assert zeroed.before == pytest.approx(direct.clean_metric, abs=1e-5) and zeroed.change < -0.5 * gap
    one = task.clean[:1]
    same = ablate(model, one, metric_first(task), "blocks.0.hook_resid_pre", how="resample", reference=one)
    assert abs(same.change) < 1e-6  # resampling from itself is the identity


def metric_first(task):
    return answer_logit(Task(task.clean[:1], task.corrupt[:1], task.answers[:1]))
