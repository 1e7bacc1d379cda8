"""Evaluation invariants: perfect and zero reconstructions, FVU by hand, relative bias, save/load."""

import math
from types import SimpleNamespace

import pytest
import torch

import mechscope as ms
from mechscope.dictionary.evaluate import DictionaryEvaluation, evaluate
from mechscope.dictionary.source import SourceConfig
from tests.models.tiny import tiny_model

SITE = "blocks.0.hook_resid_post"


class Fake:
    """A 'dictionary' whose latents are the input itself and whose decoder is `decode`."""

    def __init__(self, d: int, decode=lambda a: a, site: str = SITE):
        self.cfg = SimpleNamespace(hook_name=site, d_in=d, d_sae=d)
        self._decode = decode

    def encode(self, x):
        return x

    def decode(self, acts, x=None):
        return self._decode(acts)


def tokens(n=6, ctx=10, seed=1):
    return torch.randint(1, 97, (n, ctx), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_perfect_reconstruction_scores_one_and_zero_reconstruction_scores_zero(kind):
    model = tiny_model(kind)
    perfect = evaluate(model, Fake(32), tokens(), batch_size=4)
    assert perfect.fvu == pytest.approx(0.0, abs=1e-12) and perfect.mse == pytest.approx(0.0, abs=1e-12)
    assert perfect.ce_sae == pytest.approx(perfect.ce_clean, abs=1e-9)
    assert perfect.ce_loss_score == pytest.approx(1.0, abs=1e-6) and perfect.kl_sae == pytest.approx(0.0, abs=1e-9)
    assert perfect.kl_div_score == pytest.approx(1.0, abs=1e-6) and perfect.cosine == pytest.approx(1.0, abs=1e-9)
    assert perfect.relative_bias == pytest.approx(1.0, abs=1e-9) and perfect.n_tokens == 6 * 9
    zero = evaluate(model, Fake(32, torch.zeros_like), tokens(), batch_size=4)
    assert zero.ce_loss_score == pytest.approx(0.0, abs=1e-9) and zero.kl_div_score == pytest.approx(0.0, abs=1e-9)
    assert zero.ce_zero == pytest.approx(perfect.ce_zero, abs=1e-9) and zero.ce_sae == pytest.approx(
        zero.ce_zero, abs=1e-9
    )
    assert zero.fvu > 1.0  # zero is worse than predicting the mean


def test_fvu_density_and_bias_match_direct_computation():
    model, ids = tiny_model("gpt2"), tokens()
    torch.manual_seed(0)
    W = torch.randn(32, 32) / 6
    coder = Fake(32, lambda a: 0.5 * a + a @ W)
    r = evaluate(model, coder, ids, splice=False, source=SourceConfig(exclude_first=False))
    x = model.run(ids, record=[SITE]).cache[SITE].flatten(0, 1).double()
    x_hat = 0.5 * x + x @ W.double()
    fvu = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert r.fvu == pytest.approx(float(fvu), rel=1e-6) and r.explained_variance == pytest.approx(
        1 - float(fvu), rel=1e-6
    )
    assert r.relative_bias == pytest.approx(float(x_hat.pow(2).sum() / (x * x_hat).sum()), rel=1e-6)
    assert math.isnan(r.ce_loss_score) and r.to_dict()["ce_loss_score"] is None
    shrunk = evaluate(model, Fake(32, lambda a: 0.8 * a), ids, splice=False)
    assert shrunk.relative_bias == pytest.approx(0.8, rel=1e-6) and shrunk.fvu > 0
    assert torch.allclose(r.density, (x != 0).double().mean(0).float())


def test_density_dead_fraction_save_load_and_plot(tmp_path):
    model = tiny_model("gpt2")
    mask = torch.ones(32)
    mask[:8] = 0  # latents 0-7 never fire
    coder = Fake(32)
    coder.encode = lambda x: x * mask
    r = evaluate(model, coder, tokens(), splice=False)
    assert r.dead_fraction == pytest.approx(0.25) and r.alive_fraction == pytest.approx(0.75)
    assert r.l0 == pytest.approx(24.0) and (r.log_density()[:8] == -8.0).all()
    back = DictionaryEvaluation.load(r.save(tmp_path / "ev"))
    assert back.to_dict() == r.to_dict() and torch.equal(back.density, r.density)
    assert r.plot().axes


def test_bad_input_fails_clearly():
    model = tiny_model("gpt2")
    with pytest.raises(ms.MechscopeError, match="d_in=16 but 'blocks.0.hook_resid_post' is 32 wide"):
        evaluate(model, Fake(16), tokens())
    with pytest.raises(ms.MechscopeError, match="unknown site"):
        evaluate(model, Fake(32, site="blocks.9.hook_resid_post"), tokens())
    with pytest.raises(ms.MechscopeError, match="ctx >= 2"):
        evaluate(model, Fake(32), tokens(ctx=1))
