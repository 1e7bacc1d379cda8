"""`mechscope sae ...`: cache, train (and resume), eval, features, convert, called in-process."""

import argparse
import json

import pytest
import torch

import mechscope as ms
from mechscope.commands import sae

SITE = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sae_cli")
    from tests.lens.helpers import save_worded, write_corpus

    folder = save_worded(tmp / "model")
    corpus = write_corpus(tmp / "corpus.jsonl", 60)
    return tmp, folder, corpus


def call(argv, capsys):
    parser = argparse.ArgumentParser()
    sae.configure(parser)
    assert sae.execute(parser.parse_args(argv)) == 0
    return capsys.readouterr().out


def test_cache_train_resume_eval_features_convert(setup, capsys):
    tmp, model, corpus = setup
    data = ["--data", str(corpus), "--ctx", "16", "--heldout", "0.2"]
    cached = json.loads(
        call(["cache", str(model), "--site", SITE, "--out", str(tmp / "acts"), *data, "--json"], capsys)
    )
    assert cached["sites"] == [SITE] and cached["n_tokens"] > 0
    train = [
        "train",
        str(model),
        "--site",
        SITE,
        "--out",
        str(tmp / "sae"),
        "--width",
        "64",
        "--k",
        "4",
        "--total-tokens",
        "256",
        "--batch-tokens",
        "32",
        "--warmup",
        "1",
        "--checkpoint-every",
        "3",
        "--eval-contexts",
        "3",
        *data,
    ]
    first = json.loads(call([*train, "--json"], capsys))
    assert first["steps"] == 8 and first["eval"]["l0"] <= 4.0 and 0 <= first["eval"]["fvu"]
    coder = ms.dictionary.load(tmp / "sae")
    assert coder.cfg.hook_name == SITE and coder.cfg.d_sae == 64
    assert json.loads((tmp / "sae" / "eval.json").read_text()) == first["eval"]
    again = json.loads(call([*train, "--json"], capsys))  # resumes from the finished checkpoint: same weights
    assert again["eval"] == first["eval"]
    assert torch.equal(ms.dictionary.load(tmp / "sae").W_dec, coder.W_dec)
    from_cache = json.loads(
        call(
            [
                "train",
                str(model),
                "--cache",
                str(tmp / "acts"),
                "--out",
                str(tmp / "sae2"),
                "--width",
                "64",
                "--k",
                "4",
                "--total-tokens",
                "256",
                "--batch-tokens",
                "32",
                "--input-norm",
                "layer_norm",
                "--json",
                "--no-progress",
            ],
            capsys,
        )
    )
    assert from_cache["sites"] == [SITE] and "eval" not in from_cache
    assert ms.dictionary.load(tmp / "sae2").cfg.input_norm == "layer_norm"
    ev = json.loads(
        call(
            [
                "eval",
                str(model),
                str(tmp / "sae"),
                *data,
                "--contexts",
                "3",
                "--plot",
                str(tmp / "d.png"),
                "--save",
                str(tmp / "ev"),
                "--json",
            ],
            capsys,
        )
    )
    assert ev["fvu"] == pytest.approx(first["eval"]["fvu"], rel=1e-6) and (tmp / "d.png").is_file()
    assert (tmp / "ev" / "density.safetensors").is_file()
    text = call(["eval", str(model), str(tmp / "sae"), *data, "--contexts", "2"], capsys)
    assert "ce_loss_score" in text and "fvu" in text
    feats = json.loads(call(["features", str(model), str(tmp / "sae"), *data, "--features", "0,1", "--json"], capsys))
    assert {row["feature"] for row in feats["features"]} <= {0, 1}
    conv = json.loads(call(["convert", str(tmp / "sae"), str(tmp / "lens-sl"), "--to", "saelens", "--json"], capsys))
    assert conv["to"] == "saelens"
    back = ms.dictionary.formats.read(tmp / "lens-sl")
    x = torch.randn(5, 32)
    torch.testing.assert_close(back.decode(back.encode(x)), coder.decode(coder.encode(x)), rtol=1e-4, atol=1e-5)


def test_cli_errors_are_clear(setup):
    tmp, model, corpus = setup
    parser = argparse.ArgumentParser()
    sae.configure(parser)
    args = parser.parse_args(["train", str(model), "--site", SITE, "--out", str(tmp / "x")])
    with pytest.raises(ms.MechscopeError, match="give --data"):
        sae.execute(args)
    args = parser.parse_args(
        [
            "train",
            str(model),
            "--site",
            "blocks.9.hook_resid_post",
            "--out",
            str(tmp / "x"),
            "--data",
            str(corpus),
            "--ctx",
            "16",
        ]
    )
    with pytest.raises(ms.MechscopeError, match="unknown site"):
        sae.execute(args)
    args = parser.parse_args(["eval", str(model), str(tmp / "nothing-here"), "--data", str(corpus)])
    with pytest.raises(ms.MechscopeError, match="not a folder"):
        sae.execute(args)


def test_report_section_shows_metrics_density_and_features(tmp_path):
    from mechscope.dictionary.config import CoderConfig
    from mechscope.dictionary.train import train
    from mechscope.dictionary.trainer_config import TrainConfig
    from mechscope.report.sae import section
    from tests.models.tiny import tiny_model

    model = tiny_model("gpt2")
    data = torch.randint(1, 97, (16, 9), generator=torch.Generator().manual_seed(0))
    train(
        model,
        SITE,
        CoderConfig("topk", 32, 64, k=4),
        TrainConfig(total_tokens=128, batch_tokens=32, warmup_steps=1),
        data=data,
        out=tmp_path / "sae",
        progress=False,
    )
    assert "No dictionary given" in section(model, None)
    run = model.run(data[:1])
    page = section(model, run, tmp_path / "sae")
    assert "report prompt" in page and "CE loss score" in page and page.count("<img") == 1
    assert "feature " in page and "held-out" not in page
    (tmp_path / "sae" / "eval.json").write_text(json.dumps({"l0": 4.0, "fvu": 0.5}))
    assert "held-out (eval.json)" in section(model, None, tmp_path / "sae")


def test_cli_bad_numbers_paths_and_files_are_one_line(setup, tmp_path, capsys):
    from mechscope.cli import main
    from mechscope.dictionary.base import build
    from mechscope.dictionary.config import CoderConfig

    _, model, corpus = setup
    data = ["--data", str(corpus), "--ctx", "16", "--heldout", "0.2"]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    built = build(CoderConfig("topk", 32, 64, k=4, hook_name=SITE)).save(tmp_path / "built")
    truncated = build(CoderConfig("topk", 32, 64, k=4, hook_name=SITE)).save(tmp_path / "truncated")
    weights = truncated / "sae.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    train = [
        "sae",
        "train",
        str(model),
        "--site",
        SITE,
        "--width",
        "64",
        "--k",
        "4",
        "--total-tokens",
        "64",
        "--batch-tokens",
        "32",
        *data,
    ]
    for argv, text in [
        ([*train, "--out", str(tmp_path / "a"), "--lr", "-1"], "lr must be positive, got -1.0"),
        ([*train, "--out", str(blocker / "sae")], "is a file, not a folder"),  # before training
        (
            ["sae", "train", str(model), "--cache", str(tmp_path / "none"), "--out", str(tmp_path / "b")],
            "is not an activation cache",
        ),
        (["sae", "eval", str(model), str(truncated), *data], "cannot read the dictionary weights"),
        (["sae", "meta", str(built), "--epochs", "0"], "epochs and width must be at least 1"),
        (["sae", "error", str(model), str(built), *data, "--ridge", "-1"], "ridge must be positive"),
        (
            [
                "crosscoder",
                "train",
                str(model),
                "--site",
                SITE,
                "--site",
                "blocks.0.hook_resid_post",
                "--data",
                "pairs",
                "--out",
                str(tmp_path / "c"),
            ],
            "is not a modular-addition model",
        ),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mechscope: error:") and "\n" not in err and text in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built", "file", "truncated"]
    with pytest.raises(SystemExit) as exit_:
        main(["sae", "features", str(model), str(built), *data, "--features", "a,b"])
    assert exit_.value.code == 2 and "expected comma-separated integers" in capsys.readouterr().err


def test_bf16_cache_streamed_with_a_shard_cap(setup, capsys):
    """`sae cache --dtype bfloat16` then `sae train --cache --max-shards 1`: the CLI trains what
    `train_from_cache(max_shards=1)` trains."""
    from mechscope.dictionary.config import CoderConfig
    from mechscope.dictionary.train import train_from_cache
    from mechscope.dictionary.trainer_config import TrainConfig

    tmp, model, corpus = setup
    data = ["--data", str(corpus), "--ctx", "16"]
    cache = ["cache", str(model), "--site", SITE, "--out", str(tmp / "bf"), "--shard-contexts", "4", "--dtype"]
    cached = json.loads(call([*cache, "bfloat16", *data, "--json", "--no-progress"], capsys))
    assert cached["shards"] > 1
    schedule = ["--width", "32", "--k", "4", "--total-tokens", "128", "--batch-tokens", "32", "--warmup", "1"]
    cli = ["train", str(model), "--cache", str(tmp / "bf"), "--out", str(tmp / "s1"), *schedule, "--max-shards", "1"]
    call([*cli, "--json", "--no-progress"], capsys)
    d_in = ms.dictionary.load(tmp / "s1").cfg.d_in
    cfg = CoderConfig("topk", d_in, 32, k=4, hook_name=SITE, model_name=ms.dictionary.load(tmp / "s1").cfg.model_name)
    again = train_from_cache(
        tmp / "bf", cfg, TrainConfig(total_tokens=128, batch_tokens=32, warmup_steps=1), progress=False, max_shards=1
    )
    assert torch.equal(again.W_dec, ms.dictionary.load(tmp / "s1").W_dec)


def test_train_adam_lazy_reaches_the_trainer(setup, capsys):
    """`sae train --adam lazy` trains what `train_from_cache(TrainConfig(adam="lazy"))` trains,
    and a non-top-k architecture is refused in one line."""
    from mechscope.dictionary.config import CoderConfig
    from mechscope.dictionary.train import train_from_cache
    from mechscope.dictionary.trainer_config import TrainConfig

    tmp, model, corpus = setup
    data = ["--data", str(corpus), "--ctx", "16", "--json", "--no-progress"]
    call(["cache", str(model), "--site", SITE, "--out", str(tmp / "lz"), "--shard-contexts", "4", *data], capsys)
    schedule = ["--width", "32", "--k", "4", "--total-tokens", "128", "--batch-tokens", "32", "--warmup", "1"]
    cli = ["train", str(model), "--cache", str(tmp / "lz"), *schedule, "--adam", "lazy", "--json", "--no-progress"]
    call([*cli, "--out", str(tmp / "lazy")], capsys)
    saved = ms.dictionary.load(tmp / "lazy")
    cfg = CoderConfig("topk", saved.cfg.d_in, 32, k=4, hook_name=SITE, model_name=saved.cfg.model_name)
    again = train_from_cache(
        tmp / "lz", cfg, TrainConfig(total_tokens=128, batch_tokens=32, warmup_steps=1, adam="lazy"), progress=False
    )
    assert torch.equal(again.W_dec, saved.W_dec)
    dense = train_from_cache(tmp / "lz", cfg, TrainConfig(total_tokens=128, batch_tokens=32, warmup_steps=1))
    assert not torch.equal(dense.W_dec, saved.W_dec)  # the flag changed the optimiser
    parser = argparse.ArgumentParser()
    sae.configure(parser)
    args = parser.parse_args([*cli, "--out", str(tmp / "relu"), "--arch", "relu"])
    with pytest.raises(ms.MechscopeError, match="lazy Adam needs"):
        sae.execute(args)
