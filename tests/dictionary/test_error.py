"""SAE error analysis: planted linear errors are predicted (R² near 1), independent noise is not
(R² near 0); end to end on a tiny model; save/load; bad input fails clearly."""

import pytest
import torch

import mechscope as ms
from mechscope.dictionary.config import CoderConfig
from mechscope.dictionary.error import (
    ErrorAnalysis,
    error_analysis,
    linear_predictability,
    ridge_fit,
)
from tests.lens.helpers import check_shapes
from tests.models.tiny import tiny_model

N, D = 4000, 16


def inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=gen) * 3 + 1, gen


def test_ridge_with_tiny_penalty_is_least_squares():
    x, gen = inputs()
    W0, b0 = torch.randn(D, 3, generator=gen), torch.randn(3, generator=gen)
    W, b = ridge_fit(x, x @ W0 + b0, ridge=1e-12)
    assert torch.allclose(W.float(), W0, atol=1e-4) and torch.allclose(b.float(), b0, atol=1e-4)


def test_planted_linear_error_is_predicted():
    x, gen = inputs()
    u = torch.randn(D, generator=gen)
    u /= u.norm()
    w = torch.randn(D, generator=gen) * 0.3
    scale = x @ w + 10  # positive: the norm is linear in x
    assert bool((scale > 0).all())
    e = scale[:, None] * u + 0.05 * torch.randn(N, D, generator=gen)
    fit = linear_predictability(x, e)
    assert fit["norm_r2"] > 0.98 and fit["vector_r2"] > 0.98
    e_full = x @ torch.randn(D, D, generator=gen)  # any linear map: the vector is predictable
    assert linear_predictability(x, e_full)["vector_r2"] > 0.999


def test_independent_noise_is_not_predicted():
    x, gen = inputs(1)
    e = torch.randn(N, D, generator=gen) * torch.rand(N, 1, generator=gen) * 2
    fit = linear_predictability(x, e)
    assert abs(fit["norm_r2"]) < 0.02 and abs(fit["vector_r2"]) < 0.02 and abs(fit["input_norm_r2"]) < 0.02
    assert fit["n_train"] + fit["n_test"] == N and len(fit["test_norm"]) == fit["n_test"]


def test_end_to_end_a_constant_reconstruction_leaves_a_linear_error_and_saves(tmp_path):
    model = tiny_model("llama")
    site = "blocks.1.hook_resid_post"
    sae = ms.dictionary.build(CoderConfig("relu", 32, 16, hook_name=site))
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.normal_()
    ids = torch.randint(1, 97, (40, 12), generator=torch.Generator().manual_seed(0))
    result = error_analysis(model, sae, ids)  # x_hat = b_dec: e = x - b_dec, linear in x
    assert result.vector_r2 > 0.999 and result.n_tokens == 40 * 11
    assert torch.isnan(result.token_norms[:, 0]).all() and not torch.isnan(result.token_norms[:, 1:]).any()
    x = model.run(ids, record=[site]).cache[site][:, 1:]
    assert torch.allclose(result.token_norms[:, 1:], (x - sae.b_dec).norm(dim=-1), atol=1e-4)
    assert result.fvu > 1 and result.worst(3)[0][2] == pytest.approx(float(result.token_norms[:, 1:].max()))
    check_shapes(result)
    back = ErrorAnalysis.load(result.save(tmp_path / "err"))
    assert back.to_dict() == result.to_dict() and torch.equal(back.test_predicted, result.test_predicted)
    assert back.plot() is not None
    tensors = tmp_path / "err" / "errors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])  # truncated: one line naming the file
    with pytest.raises(ms.MechscopeError, match=r"errors\.safetensors") as err:
        ErrorAnalysis.load(tmp_path / "err")
    assert "\n" not in str(err.value)


def test_bad_input_fails_clearly(tmp_path):
    with pytest.raises(ms.MechscopeError, match="too few"):
        linear_predictability(torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ms.MechscopeError, match="matching"):
        linear_predictability(torch.randn(30, 4), torch.randn(20, 4))
    with pytest.raises(ms.MechscopeError, match="test_fraction"):
        linear_predictability(torch.randn(30, 4), torch.randn(30, 4), test_fraction=1.5)
    with pytest.raises(ms.MechscopeError, match="does not hold a dictionary error analysis"):
        ErrorAnalysis.load(tmp_path)
    model = tiny_model("llama")
    with pytest.raises(ms.MechscopeError, match="d_in=16"):
        error_analysis(
            model,
            ms.dictionary.build(CoderConfig("relu", 16, 8, hook_name="blocks.1.hook_resid_post")),
            torch.ones(2, 5, dtype=torch.long),
        )


def test_cli_prints_r2_and_the_largest_errors(tmp_path, capsys):
    import argparse
    import json

    from mechscope.commands import sae as command
    from tests.lens.helpers import save_worded, write_corpus

    folder = save_worded(tmp_path / "model")
    corpus = write_corpus(tmp_path / "corpus.jsonl", 80)
    ms.dictionary.build(CoderConfig("topk", 32, 16, k=4, hook_name="blocks.1.hook_resid_post")).save(tmp_path / "sae")
    parser = argparse.ArgumentParser()
    command.configure(parser)
    args = parser.parse_args(
        [
            "error",
            str(folder),
            str(tmp_path / "sae"),
            "--data",
            str(corpus),
            "--ctx",
            "16",
            "--heldout",
            "0.5",
            "--save",
            str(tmp_path / "err"),
            "--plot",
            str(tmp_path / "e.png"),
            "--json",
        ]
    )
    assert command.execute(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert -1 < out["norm_r2"] <= 1 and len(out["largest_errors"]) == 5 and (tmp_path / "e.png").is_file()
    assert ErrorAnalysis.load(tmp_path / "err").to_dict() == {k: v for k, v in out.items() if k != "largest_errors"}
