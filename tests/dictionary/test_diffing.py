"""Model diffing: relative decoder norms and classes on hand-set decoders, the diff of two
real models end to end (stream alignment, contexts, save/load, plot), and clear errors for
models that do not read tokens alike."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mechscope.dictionary.base import SparseCoder, build
from mechscope.dictionary.config import CoderConfig
from mechscope.dictionary.diffing import (
    KINDS,
    ModelDiff,
    density,
    diff,
    exclusive_contexts,
    relative_norms,
    stacked_activations,
)
from mechscope.dictionary.source import ActivationSource, SourceConfig
from mechscope.dictionary.stacked import (
    check_same_inputs,
    crosscoder_config,
    diff_source,
)
from mechscope.dictionary.train import Trainer
from mechscope.dictionary.trainer_config import TrainConfig
from mechscope.errors import MechscopeError
from tests.models.tiny import tiny_model

SITE = "blocks.1.hook_resid_post"


def hand_set():
    """Latents with |d_A|, |d_B| = (1, 0), (0, 2), (1, 1), (1, 3), (0, 0)."""
    coder = build(CoderConfig("crosscoder", 8, 5, blocks=("A:s", "B:s")))
    W = torch.zeros(5, 8)
    W[0, 0] = 1
    W[1, 5] = 2
    W[2, 1], W[2, 4] = 1, 1
    W[3, 2], W[3, 6] = 1, 3
    with torch.no_grad():
        coder.W_dec.copy_(W)
    return coder


def test_relative_norms_and_classes_on_hand_set_decoders():
    coder = hand_set()
    torch.testing.assert_close(relative_norms(coder), torch.tensor([0.0, 1.0, 0.5, 0.75, 0.5]))
    result = diff(coder, threshold=0.1)
    assert result.labels == ["A", "B"]
    assert [KINDS[k] for k in result.kind] == ["a_only", "b_only", "shared", "shared", "dead"]
    assert result.latents("a_only") == [0] and result.latents("b_only") == [1] and result.latents("shared") == [2, 3]
    assert diff(coder, threshold=0.3).latents("b_only") == [1, 3]
    # a latent that never fires is dead whatever its decoder
    assert KINDS[diff(coder, density=torch.tensor([0.1, 0.0, 0.1, 0.1, 0.1])).kind[1]] == "dead"
    # per-site scale folded into the weights does not change the normalised norms
    coder.cfg = coder.cfg.replace(norm_scale=2.0)
    with torch.no_grad():
        coder.block_scale.copy_(torch.tensor([1.0, 5.0]))
    torch.testing.assert_close(relative_norms(coder.fold_norm_scale()), relative_norms(coder))
    with pytest.raises(MechscopeError, match="crosscoder"):
        diff(build(CoderConfig("relu", 8, 4)))
    with pytest.raises(MechscopeError, match="threshold"):
        diff(coder, threshold=0.5)


def test_model_diff_saves_loads_and_plots(tmp_path):
    result = diff(hand_set(), density=torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0]))
    again = ModelDiff.load(result.save(tmp_path / "diff"))
    assert again.labels == result.labels and torch.equal(again.kind, result.kind)
    assert torch.equal(again.relative, result.relative) and torch.equal(again.density, result.density)
    assert again.to_dict()["counts"] == {"shared": 2, "a_only": 1, "b_only": 1, "dead": 1}
    fig = result.plot()
    assert "1 only in A" in fig.axes[0].get_title()


@pytest.fixture(scope="module")
def two_models():
    return tiny_model("llama", seed=0), tiny_model("llama", seed=1)


def test_diff_of_two_models_end_to_end(two_models, tmp_path):
    a, b = two_models
    tokens = torch.randint(1, 97, (24, 9), generator=torch.Generator().manual_seed(0))
    src = SourceConfig(batch_tokens=64, model_batch=8, buffer_contexts=8)
    with pytest.raises(MechscopeError, match="labels"):
        diff_source(a, b, SITE, tokens, src)  # both are called tiny-llama
    stream = diff_source(a, b, SITE, tokens, src, labels=("base", "tuned"))
    assert stream.blocks == (f"base:{SITE}", f"tuned:{SITE}")
    # rows line up: each block equals that model's own stream at the same position
    batch, position = next(stream.batches())
    for model, half in ((a, slice(0, 32)), (b, slice(32, 64))):
        own, own_position = next(ActivationSource(model, SITE, tokens, src).batches())
        assert own_position == position and torch.equal(batch[stream.key][:, half], own[SITE])
    cfg = crosscoder_config(stream, 16, l1_coeff=1.0)
    coder = Trainer(
        stream,
        [cfg],
        TrainConfig(total_tokens=64 * 6, batch_tokens=64, lr=3e-3, warmup_steps=1, norm_batches=1),
        device="cpu",
    ).fit(progress=False)[0]
    coder = SparseCoder.load(coder.save(tmp_path / "cc"))
    members = [(a, SITE), (b, SITE)]
    x = stacked_activations(members, tokens)
    assert x.shape == (24, 9, 64)
    result = diff(coder, density=density(coder, x))
    assert result.labels == ["base", "tuned"] and sum(result.counts().values()) == 16
    top = exclusive_contexts(coder, members, tokens, [0, 1], k=3, context=2, acts_in=x)
    assert top.features == [0, 1] and top.values.shape == (2, 3)
    assert bool((top.values[:, :-1] >= top.values[:, 1:]).all())
    for row in top.rows():  # each value is the latent's activation at that token
        again = coder.encode(x[row["sequence"], row["pos"]])[row["feature"]].detach()
        assert float(again) == pytest.approx(row["value"], rel=1e-4)
        assert row["tokens"][row["centre"]] == str(int(tokens[row["sequence"], row["pos"]]))


def _fake(name, vocab, tokenizer_vocab=None):
    tok = None if tokenizer_vocab is None else SimpleNamespace(get_vocab=lambda: tokenizer_vocab)
    return SimpleNamespace(name=name, tokenizer=tok, dims=SimpleNamespace(d_vocab=vocab))


def test_models_that_read_tokens_differently_fail_clearly():
    with pytest.raises(MechscopeError, match="different tokenizers"):
        check_same_inputs(_fake("a", 3, {"x": 0, "y": 1, "z": 2}), _fake("b", 3, {"x": 0, "z": 1, "y": 2}))
    with pytest.raises(MechscopeError, match="tokenizer"):
        check_same_inputs(_fake("a", 3, {"x": 0, "y": 1, "z": 2}), _fake("b", 3))
    with pytest.raises(MechscopeError, match="vocabulary"):
        check_same_inputs(_fake("a", 114), _fake("b", 97))  # no tokenizers: vocabulary sizes
    check_same_inputs(_fake("a", 114), _fake("b", 114))  # e.g. two zoo:modadd snapshots
    check_same_inputs(_fake("a", 3, {"x": 0}), _fake("b", 3, {"x": 0}))


def test_sites_of_different_widths_fail_clearly(two_models):
    a = two_models[0]
    other = tiny_model("gpt2")  # same vocabulary size (97), no tokenizers
    tokens = torch.randint(1, 97, (8, 5), generator=torch.Generator().manual_seed(0))
    narrow = SourceConfig(batch_tokens=16, model_batch=8, buffer_contexts=8)
    # A's residual (32 wide) against B's MLP neurons (64 wide): no common width without a projection
    with pytest.raises(MechscopeError, match="projection"):
        diff_source(a, other, SITE, tokens, narrow, labels=("A", "B"), site_b="blocks.1.mlp.hook_post")


def test_model_diff_shapes_match_their_annotations():
    from tests.lens.helpers import check_shapes

    check_shapes(diff(hand_set(), density=torch.full((5,), 0.5)))


def test_cli_train_across_layers_and_models_then_diff(tmp_path, capsys):
    import argparse
    import json

    from mechscope.commands import crosscoder as command
    from tests.lens.helpers import worded_model, write_corpus

    def call(argv):
        parser = argparse.ArgumentParser()
        command.configure(parser)
        assert command.execute(parser.parse_args(argv)) == 0
        return json.loads(capsys.readouterr().out)

    folders = []
    for seed in (0, 1):
        model = worded_model(seed)
        model.hf.save_pretrained(tmp_path / f"m{seed}")
        model.tokenizer.save_pretrained(tmp_path / f"m{seed}")
        folders.append(str(tmp_path / f"m{seed}"))
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40)
    common = [
        "--data",
        str(corpus),
        "--ctx",
        "16",
        "--heldout",
        "0.2",
        "--width",
        "32",
        "--total-tokens",
        "128",
        "--batch-tokens",
        "32",
        "--warmup",
        "1",
        "--eval-contexts",
        "4",
        "--json",
    ]
    layers = call(
        [
            "train",
            folders[0],
            "--site",
            "blocks.0.hook_resid_post",
            "--site",
            SITE,
            "--variant",
            "weakly-causal",
            "--out",
            str(tmp_path / "layers"),
            *common,
        ]
    )
    assert layers["arch"] == "weakly_causal_crosscoder" and layers["blocks"] == ["blocks.0.hook_resid_post", SITE]
    assert set(layers["eval"]["fvu_per_block"]) == set(layers["blocks"])
    trained = call(
        [
            "train",
            folders[0],
            "--vs",
            folders[1],
            "--labels",
            "base,tuned",
            "--site",
            SITE,
            "--out",
            str(tmp_path / "diff"),
            *common,
        ]
    )
    assert trained["blocks"] == [f"base:{SITE}", f"tuned:{SITE}"]
    assert SparseCoder.load(tmp_path / "diff").cfg.blocks == tuple(trained["blocks"])
    found = call(
        [
            "diff",
            folders[0],
            folders[1],
            str(tmp_path / "diff"),
            "--data",
            str(corpus),
            "--ctx",
            "16",
            "--heldout",
            "0.2",
            "--plot",
            str(tmp_path / "hist.png"),
            "--save",
            str(tmp_path / "result"),
            "--json",
        ]
    )
    assert found["labels"] == ["base", "tuned"] and sum(found["counts"].values()) == 32
    assert (tmp_path / "hist.png").stat().st_size > 0 and ModelDiff.load(tmp_path / "result").labels == [
        "base",
        "tuned",
    ]
    with pytest.raises(MechscopeError, match="two-model crosscoder"):
        call(["diff", folders[0], folders[1], str(tmp_path / "layers"), "--data", str(corpus), "--json"])
