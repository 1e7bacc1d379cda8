"""The tuned lens: beats the logit lens on held-out text, saves and loads exactly, refuses
other models, resumes bit for bit, trains the same under 2-process DDP, and its CLI."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

import mechscope as ms
from mechscope.data import DataConfig, stdlib_documents, tokenize_documents
from mechscope.lens.logit import logit_lens
from mechscope.lens.tuned import (
    LensEvaluation,
    TunedLens,
    TunedLensConfig,
    TunedLensTrainer,
    evaluate,
    rows_for_step,
    train,
)
from mechscope.zoo import zoo_path
from tests.lens.helpers import check_shapes, save_worded
from tests.models.tiny import tiny_model


def random_contexts(n: int = 24, ctx: int = 16, vocab: int = 97, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, ctx), generator=torch.Generator().manual_seed(seed))


# zoo:pycode on a small stdlib corpus it never trained on


@pytest.fixture(scope="module")
def pycode():
    try:
        zoo_path("pycode")
    except ms.MechscopeError:
        pytest.skip("zoo:pycode has no weights yet (mechscope zoo train pycode)")
    return ms.load("zoo:pycode")


@pytest.fixture(scope="module")
def pycode_lens(pycode):
    docs = stdlib_documents(12, split="heldout")
    data = tokenize_documents(
        docs, pycode.tokenizer, DataConfig("stdlib", ctx_len=64, max_tokens=20_000, heldout_fraction=0.15)
    )
    cfg = TunedLensConfig(steps=30, batch_size=8)  # the paper's optimiser (SGD, Nesterov) at its default rate
    return train(pycode, data.train, cfg, progress=False), data


def test_tuned_lens_beats_logit_lens_on_heldout_text(pycode, pycode_lens):
    lens, data = pycode_lens
    result = evaluate(pycode, lens, data.heldout)
    check_shapes(result)
    assert result.layers == ["embed", "L0", "L1", "L2", "L3"]
    assert (result.tuned_kl[:-1] < result.logit_kl[:-1]).all(), result.rows()
    assert result.tuned_kl[-1] == 0 and result.logit_kl[-1] == 0  # the last stream is the output itself
    # the logit lens, reading through the tuned lens, measures the same KL
    through = logit_lens(pycode, data.heldout[:4], translator=lens, include_mid=False)
    expected = evaluate(pycode, lens, data.heldout[:4]).tuned_kl
    torch.testing.assert_close(through.kl.mean((1, 2)), expected, rtol=1e-4, atol=1e-5)


def test_save_load_reproduces_outputs_bitwise(pycode, pycode_lens, tmp_path):
    lens, _ = pycode_lens
    lens.save(tmp_path / "lens")
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    assert cfg["model"] == pycode.name and cfg["d_model"] == 256 and cfg["n_layers"] == 4
    assert len(cfg["unembed_sha256"]) == 64
    loaded = TunedLens.load(tmp_path / "lens", pycode)
    resid = torch.randn(2, 5, 256)
    for i in range(5):
        assert torch.equal(loaded(resid, i), lens(resid, i))
    assert torch.equal(loaded(resid, 4), resid)


def test_loading_onto_another_model_is_refused(pycode, pycode_lens, tmp_path):
    lens, _ = pycode_lens
    lens.save(tmp_path / "lens")
    with pytest.raises(ms.MechscopeError, match=f"was trained for model {re.escape(repr(pycode.name))}") as err:
        TunedLens.load(tmp_path / "lens", tiny_model("llama"))
    assert "\n" not in str(err.value)


# Tiny random models: the mechanics


def test_same_shape_but_other_weights_is_refused(tmp_path):
    lens = train(tiny_model("llama", seed=0), random_contexts(), TunedLensConfig(steps=1, batch_size=4), progress=False)
    lens.save(tmp_path / "lens")
    TunedLens.load(tmp_path / "lens", tiny_model("llama", seed=0))
    with pytest.raises(ms.MechscopeError, match="trained for model 'tiny-llama'.*differ"):
        TunedLens.load(tmp_path / "lens", tiny_model("llama", seed=1))
    with pytest.raises(ms.MechscopeError, match="no tuned lens"):
        TunedLens.load(tmp_path, tiny_model("llama"))


def test_starts_as_identity_and_indexes_like_hidden_states():
    model = tiny_model("llama")
    lens = TunedLensTrainer(model).lens()
    resid = torch.randn(3, 32)
    assert all(torch.equal(lens(resid, i), resid) for i in range(3))
    trained = train(model, random_contexts(), TunedLensConfig(steps=3, batch_size=4, lr=0.05), progress=False)
    assert not torch.equal(trained(resid, 0), resid) and torch.equal(trained(resid, 2), resid)
    with pytest.raises(ms.MechscopeError, match="out of range: 0 .embeddings. to 2"):
        trained(resid, 3)


def test_losses_and_gradients_match_plain_autograd():
    model, ids = tiny_model("llama"), random_contexts(4)
    trainer = TunedLensTrainer(model)
    with torch.no_grad():
        trainer.translators.weight.normal_(0, 0.1)
        trainer.translators.bias.normal_(0, 0.1)
    kl = trainer.losses(ids)
    fast = [p.grad.clone() for p in trainer.translators.parameters()]
    trainer.translators.zero_grad()
    run = model.run(ids, record=trainer.sites + ["blocks.1.hook_resid_post"])
    final = run.logits.log_softmax(-1)
    w, b = trainer.translators.weight, trainer.translators.bias
    plain = []
    for i, site in enumerate(trainer.sites):
        h = run.cache[site]
        logq = model.to_logits(h + h @ w[i].T + b[i]).log_softmax(-1)
        plain.append((final.exp() * (final - logq)).sum(-1).mean())
    torch.stack(plain).sum().backward()
    torch.testing.assert_close(kl, torch.stack(plain).detach(), rtol=1e-4, atol=1e-5)  # sum p log p - sum p log q
    for got, want in zip(fast, (w.grad, b.grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_resume_from_checkpoint_is_bitwise_identical(tmp_path, optimizer):
    model, data = tiny_model("llama"), random_contexts()
    cfg = TunedLensConfig(steps=6, batch_size=4, optimizer=optimizer, lr=0.05, checkpoint_every=3, warmup_steps=2)
    straight = TunedLensTrainer(model, cfg).fit(data, progress=False)
    first = TunedLensTrainer(model, cfg)
    for _ in range(4):  # "crashes" after step 4; the last checkpoint is at step 3
        first.step(data)
        if first.step_count == 3:
            first.save_checkpoint(tmp_path, data)
    resumed = TunedLensTrainer(model, cfg)
    assert resumed.load_checkpoint(tmp_path, data) and resumed.step_count == 3
    lens = resumed.fit(data, checkpoint_dir=tmp_path, progress=False)
    assert torch.equal(lens.weight, straight.weight) and torch.equal(lens.bias, straight.bias)
    assert [p.name for p in tmp_path.glob("step-*")] == ["step-0000006.safetensors"]
    with pytest.raises(ms.MechscopeError, match="belongs to another run"):
        TunedLensTrainer(model, TunedLensConfig(steps=7, batch_size=4, optimizer=optimizer)).load_checkpoint(
            tmp_path, data
        )


def test_batches_are_disjoint_rank_slices_of_a_seeded_epoch_order():
    cfg = TunedLensConfig(batch_size=4, seed=5)
    epoch = torch.cat([rows_for_step(10, s, cfg) for s in range(5)])
    assert sorted(epoch[:10].tolist()) == list(range(10)) and sorted(epoch[10:].tolist()) == list(range(10))
    halves = [rows_for_step(10, 1, cfg, rank, 2) for rank in (0, 1)]
    assert sorted(torch.cat(halves).tolist()) == sorted(rows_for_step(10, 1, cfg).tolist())
    assert not set(halves[0].tolist()) & set(halves[1].tolist())


def _ddp_worker(rank: int, store: str, folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        lens = train(
            tiny_model("llama"),
            random_contexts(),
            TunedLensConfig(steps=4, batch_size=4, lr=0.05),
            out=f"{folder}/lens",
            progress=False,
        )
        save_file({"weight": lens.weight, "bias": lens.bias}, f"{folder}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh interpreters importing torch and transformers: ~50 s on a busy 2-core machine
def test_two_process_gloo_ddp_matches_one_process(tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ("weight", "bias"))
    assert (tmp_path / "lens" / "cfg.json").is_file()  # written by rank 0
    single = train(
        tiny_model("llama"), random_contexts(), TunedLensConfig(steps=4, batch_size=4, lr=0.05), progress=False
    )
    assert single.weight.abs().max() > 0
    torch.testing.assert_close(ranks[0]["weight"], single.weight, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ranks[0]["bias"], single.bias, rtol=1e-4, atol=1e-6)


def test_evaluation_saves_and_plots(tmp_path):
    model = tiny_model("gpt2")
    lens = train(model, random_contexts(), TunedLensConfig(steps=2, batch_size=4), progress=False)
    result = evaluate(model, lens, random_contexts(4, seed=1), batch_size=3)
    check_shapes(result)
    assert result.n_tokens == 64 and result.layers == ["embed", "L0", "L1"]
    assert LensEvaluation.load(result.save(tmp_path / "ev")).rows() == result.rows()
    assert result.plot().axes


def test_cli_trains_saves_and_prints_the_kl_table(tmp_path, capsys):
    from mechscope.commands import tuned_lens

    folder = save_worded(tmp_path / "model")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"text": f"line {i}: the quick brown fox jumps over the lazy dog"}) for i in range(40))
    )
    parser = argparse.ArgumentParser()
    tuned_lens.configure(parser)
    out = tmp_path / "lens"
    args = parser.parse_args(
        [str(folder), "--data", str(corpus), "--out", str(out), "--steps", "3", "--ctx", "16", "--batch", "4", "--json"]
    )
    assert tuned_lens.execute(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["layer"] for row in result["layers"]] == ["embed", "L0", "L1"]
    assert json.loads((out / "metrics.json").read_text()) == result
    lens = TunedLens.load(out, ms.load(str(folder)))
    assert lens.meta["steps"] == 3 and (out / "checkpoint" / "state.json").is_file()
    args = parser.parse_args(
        [
            str(folder),
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--steps",
            "3",
            "--ctx",
            "16",
            "--batch",
            "4",
            "--no-progress",
        ]
    )
    assert tuned_lens.execute(args) == 0  # resumes from the finished checkpoint: no more steps
    text = capsys.readouterr().out
    assert "logit lens" in text and "tuned lens" in text and "embed" in text
