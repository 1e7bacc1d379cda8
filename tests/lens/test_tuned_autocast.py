"""Tuned-lens training under bfloat16 autocast (`TunedLensConfig.autocast`): it runs in
bf16 when asked, trains, and its per-layer loss stays close to float32 training's; 'auto'
follows the CPU's native bf16 support; the CLI passes the option through."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

import mechscope as ms
from mechscope.lens.tuned import TunedLens, TunedLensConfig, TunedLensTrainer, native_bf16
from tests.lens.helpers import save_worded
from tests.models.tiny import tiny_model


def contexts(n: int = 16, ctx: int = 16, vocab: int = 97, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, ctx), generator=torch.Generator().manual_seed(seed))


def losses_over_training(kind: str, autocast: str, steps: int = 8) -> tuple[TunedLensTrainer, torch.Tensor]:
    model = tiny_model(kind)
    trainer = TunedLensTrainer(model, TunedLensConfig(steps=steps, batch_size=4, lr=0.05, autocast=autocast))
    data = contexts()
    return trainer, torch.stack([trainer.step(data) for _ in range(steps)])  # [step, layer]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_bf16_trains_and_stays_close_to_fp32(kind):
    fp32, loss32 = losses_over_training(kind, "off")
    bf16, loss16 = losses_over_training(kind, "bf16")
    assert not fp32.bf16 and bf16.bf16
    assert torch.isfinite(loss16).all()
    assert not torch.equal(loss16, loss32)  # autocast really ran: bf16 rounding moves the numbers
    # same data and seed: every step's per-layer KL within a few percent of fp32's
    torch.testing.assert_close(loss16, loss32, rtol=0.05, atol=2e-3)
    assert loss16[-1].sum() < loss16[0].sum()  # it trains: the summed KL falls
    # the translators it learns are close to fp32's (bf16 only rounds the readings; updates stay fp32)
    assert bf16.translators.weight.dtype == torch.float32
    w32, w16 = fp32.translators.weight.detach(), bf16.translators.weight.detach()
    assert (w16 - w32).norm() <= 0.1 * w32.norm()


def test_autocast_runs_the_unembedding_in_bf16():
    model = tiny_model("llama")
    trainer = TunedLensTrainer(model, TunedLensConfig(steps=1, batch_size=4, autocast="bf16"))
    seen = []
    handle = model.hf.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        trainer.losses(contexts(4))
    finally:
        handle.remove()
    # the model's own forward stays float32; the lens readings (one per translator) are bf16
    assert seen[0] == torch.float32 and set(seen[1:]) == {torch.bfloat16} and len(seen) == 1 + len(trainer.sites)


def test_auto_follows_native_bf16_and_bad_values_are_refused():
    model = tiny_model("llama")
    assert TunedLensTrainer(model, TunedLensConfig(autocast="auto")).bf16 == native_bf16(torch.device("cpu"))
    assert TunedLensConfig().autocast == "off"  # float32 unless asked: the same numbers on every machine
    with pytest.raises(ms.MechscopeError, match="autocast must be one of off, bf16, auto"):
        TunedLensConfig(autocast="fp16")


def test_cli_option_reaches_the_trainer(tmp_path, capsys):
    from mechscope.commands import tuned_lens

    folder = save_worded(tmp_path / "model")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"text": f"line {i}: the quick brown fox jumps over the lazy dog"}) for i in range(40))
    )
    parser = argparse.ArgumentParser()
    tuned_lens.configure(parser)
    assert parser.parse_args([str(folder), "--data", str(corpus)]).autocast == "off"
    out = tmp_path / "lens"
    args = parser.parse_args(
        [
            str(folder),
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--steps",
            "2",
            "--ctx",
            "16",
            "--batch",
            "4",
            "--autocast",
            "bf16",
            "--json",
        ]
    )
    assert tuned_lens.execute(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert all(row["tuned_kl"] == row["tuned_kl"] for row in result["layers"])  # finite (not NaN)
    assert TunedLens.load(out, ms.load(str(folder))).meta["train"]["autocast"] == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args([str(folder), "--data", str(corpus), "--autocast", "fp16"])
