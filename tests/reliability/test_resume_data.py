"""A dictionary checkpoint records the model and the data it was trained on: resuming it with
another corpus, another activation cache or another model is refused in one line naming
what differs (SAEs, transcoders, crosscoders; library and CLI), while a resume with the same
data still continues bit for bit."""

import json
import logging

import pytest
import torch

import mechscope as ms
from mechscope.cli import main
from mechscope.dictionary.cache import write_cache
from mechscope.dictionary.config import CoderConfig
from mechscope.dictionary.source import SourceConfig
from mechscope.dictionary.stacked import train_crosscoder
from mechscope.dictionary.train import train, train_from_cache
from mechscope.dictionary.trainer_config import TrainConfig
from mechscope.dictionary.transcoder import mlp_sites, transcoder_config
from tests.models.tiny import _configs, tiny_model

SITE = "blocks.1.hook_resid_post"
CODER = CoderConfig("topk", 32, 64, k=4, aux_k=8)
SMALL = TrainConfig(
    total_tokens=8 * 32, batch_tokens=32, lr=3e-3, warmup_steps=2, checkpoint_every=2, norm_batches=2, dead_window=64
)
SOURCE = SourceConfig(model_batch=8, buffer_contexts=8)


def contexts(seed=0, n=16):
    return torch.randint(1, 97, (n, 9), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and "belongs to another run (" in text and "choose another --out" in text
    return text


def test_a_stream_resume_with_other_contexts_is_refused_and_with_the_same_is_exact(tmp_path, model):
    out = tmp_path / "sae"
    train(model, SITE, CODER, SMALL, data=contexts(0), source=SOURCE, out=out, progress=False, stop_after=3)
    with pytest.raises(ms.MechscopeError) as err:
        train(model, SITE, CODER, SMALL, data=contexts(1), source=SOURCE, out=out, progress=False)
    assert "data.contexts_sha256 differs" in _one_line(err)
    with pytest.raises(ms.MechscopeError) as err:  # one context fewer
        train(model, SITE, CODER, SMALL, data=contexts(0)[:-1], source=SOURCE, out=out, progress=False)
    assert "data.contexts was 16, now 15" in _one_line(err)
    with pytest.raises(ms.MechscopeError) as err:  # the same tokens, another shuffle buffer
        train(
            model,
            SITE,
            CODER,
            SMALL,
            data=contexts(0),
            source=SourceConfig(model_batch=8, buffer_contexts=4),
            out=out,
            progress=False,
        )
    assert "data.buffer_contexts was 8, now 4" in _one_line(err)
    resumed = train(model, SITE, CODER, SMALL, data=contexts(0), source=SOURCE, out=out, progress=False)
    straight = train(model, SITE, CODER, SMALL, data=contexts(0), source=SOURCE, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))


def test_a_resume_on_another_model_is_refused(tmp_path, model):
    out = tmp_path / "sae"
    train(model, SITE, CODER, SMALL, data=contexts(0), source=SOURCE, out=out, progress=False, stop_after=3)
    cls, config = _configs()["llama"]
    config = config.__class__(**{**config.to_dict(), "rms_norm_eps": 1e-3})  # same widths, another config
    torch.manual_seed(0)
    other = ms.Model(cls(config), None, name=model.name)
    with pytest.raises(ms.MechscopeError) as err:
        train(other, SITE, CODER, SMALL, data=contexts(0), source=SOURCE, out=out, progress=False)
    assert "data.model.config_sha256 differs" in _one_line(err)
    renamed = ms.Model(model.hf, None, name="tiny-other")
    with pytest.raises(ms.MechscopeError) as err:
        train(renamed, SITE, CODER, SMALL, data=contexts(0), source=SOURCE, out=out, progress=False)
    assert 'data.model.name was "tiny-llama", now "tiny-other"' in _one_line(err)


def test_a_cache_resume_on_another_cache_is_refused(tmp_path, model):
    write_cache(model, SITE, contexts(0), tmp_path / "a", shard_contexts=5)
    write_cache(model, SITE, contexts(1), tmp_path / "b", shard_contexts=5)
    write_cache(model, SITE, contexts(0), tmp_path / "a8", shard_contexts=8)  # same rows, other shards
    out = tmp_path / "sae"
    train_from_cache(tmp_path / "a", CODER, SMALL, out=out, progress=False, stop_after=3)
    with pytest.raises(ms.MechscopeError) as err:
        train_from_cache(tmp_path / "b", CODER, SMALL, out=out, progress=False)
    assert "data.cache.contexts_sha256 differs" in _one_line(err)
    resumed = train_from_cache(tmp_path / "a8", CODER, SMALL, out=out, progress=False)
    straight = train_from_cache(tmp_path / "a", CODER, SMALL, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))


def test_transcoder_and_crosscoder_resumes_on_other_data_are_refused(tmp_path, model):
    tc = transcoder_config(model, 1, width=32, k=4, aux_k=8)
    train(
        model,
        mlp_sites(1)[0],
        tc,
        SMALL,
        data=contexts(0),
        source=SOURCE,
        out=tmp_path / "tc",
        progress=False,
        stop_after=3,
    )
    with pytest.raises(ms.MechscopeError) as err:
        train(model, mlp_sites(1)[0], tc, SMALL, data=contexts(1), source=SOURCE, out=tmp_path / "tc", progress=False)
    assert "data.contexts_sha256 differs" in _one_line(err)
    sites = ["blocks.0.hook_resid_post", SITE]
    train_crosscoder(model, sites, 32, SMALL, data=contexts(0), source=SOURCE, out=tmp_path / "cc", progress=False)
    with pytest.raises(ms.MechscopeError) as err:
        train_crosscoder(model, sites, 32, SMALL, data=contexts(1), source=SOURCE, out=tmp_path / "cc", progress=False)
    assert "data.stacked[0].contexts_sha256 differs" in _one_line(err)


def test_a_checkpoint_from_before_data_fingerprints_resumes_with_a_warning(tmp_path, model, caplog):
    out = tmp_path / "sae"
    train(model, SITE, CODER, SMALL, data=contexts(0), source=SOURCE, out=out, progress=False, stop_after=3)
    path = out / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    del state["data"]
    path.write_text(json.dumps(state))
    with caplog.at_level(logging.WARNING):
        resumed = train(model, SITE, CODER, SMALL, data=contexts(0), source=SOURCE, out=out, progress=False)
    assert "does not record its data" in caplog.text
    straight = train(model, SITE, CODER, SMALL, data=contexts(0), source=SOURCE, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()))


def test_cli_sae_train_with_another_corpus_is_refused(tmp_path, capsys):
    from tests.lens.helpers import save_worded

    folder = str(save_worded(tmp_path / "model"))
    corpora = []
    for name, word in (("a", "fox"), ("b", "cat")):
        corpora.append(tmp_path / f"{name}.jsonl")
        corpora[-1].write_text(
            "\n".join(
                json.dumps({"text": f"line {i}: the quick brown {word} jumps over the lazy dog"}) for i in range(60)
            )
        )
    argv = [
        "sae",
        "train",
        folder,
        "--site",
        SITE,
        "--out",
        str(tmp_path / "sae"),
        "--width",
        "32",
        "--k",
        "4",
        "--total-tokens",
        "128",
        "--batch-tokens",
        "32",
        "--warmup",
        "1",
        "--checkpoint-every",
        "2",
        "--eval-contexts",
        "0",
        "--ctx",
        "16",
        "--no-progress",
        "--data",
    ]
    assert main([*argv, str(corpora[0])]) == 0
    capsys.readouterr()
    assert main([*argv, str(corpora[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mechscope: error: the checkpoint in ") and "data.contexts_sha256 differs" in err
    assert len(err.splitlines()) == 1
    assert main([*argv, str(corpora[0])]) == 0  # the same corpus: resumes (the run is complete)
