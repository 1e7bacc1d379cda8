"""Dictionary steering: clamping keeps the SAE's error (identity), clamping to 0 removes
exactly the latent's decoder contribution; from_feature is the decoder row."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from mechscope import dictionary, edits, steering
from mechscope.errors import MechscopeError

from .conftest import PROMPTS

SITE = "blocks.2.hook_resid_post"


def _activations(model) -> torch.Tensor:
    """pycode activations at SITE over a few stdlib sources (rows of 48 tokens)."""
    text = inspect.getsource(json) + inspect.getsource(inspect.getmodule(json.dumps))
    full = model.tokenizer(text, return_tensors="pt")["input_ids"][0][: 48 * 40].view(40, 48)
    return model.run(full, record=SITE, logits=False).cache[SITE].reshape(-1, 256)


def _train(arch: str, x: torch.Tensor, **extra) -> dictionary.SparseCoder:
    torch.manual_seed(0)
    cfg = dictionary.CoderConfig(arch=arch, d_in=256, d_sae=512, hook_name=SITE, model_name="zoo:pycode", **extra)
    coder = dictionary.build(cfg)
    opt = torch.optim.Adam(coder.parameters(), lr=3e-3)
    for step in range(100):
        batch = x[torch.randint(len(x), (128,))]
        out = coder(batch)
        opt.zero_grad()
        out.loss.backward()
        coder.before_step()
        opt.step()
        coder.after_step()
    return coder.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def coders(pycode):
    x = _activations(pycode)
    return {
        "topk": _train("topk", x, k=16),
        "jumprelu": _train("jumprelu", x, init_threshold=0.05, l0_coeff=1e-3, bandwidth=0.05),
    }


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_clamp_to_own_value_is_identity(pycode, coders, arch):
    coder = coders[arch]
    run = pycode.run(PROMPTS, record=SITE)
    acts = coder.encode(run.cache[SITE])  # [batch, pos, d_sae]
    active = (acts != 0).flatten(0, 1).any(0).nonzero().flatten().tolist()
    x = run.cache[SITE]
    error = (x - coder.decode(acts)).norm() / x.norm()
    assert len(active) > 5 and error > 1e-3  # a real dictionary: latents fire and it does not reconstruct exactly
    edit = steering.clamp(coder, {i: acts[..., i] for i in active}, model=pycode)
    got = pycode.run(PROMPTS, edits=[edit]).logits
    rel = (got - run.logits).abs().max() / run.logits.abs().max()
    assert rel <= 1e-6
    # without the error term the same clamp would move the logits: the test can fail
    no_error = edits.replace(SITE, lambda v: coder.decode(coder.encode(v)))
    assert (pycode.run(PROMPTS, edits=[no_error]).logits - run.logits).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ["topk", "jumprelu"])
def test_clamp_to_zero_removes_the_decoder_contribution(pycode, coders, arch):
    coder = coders[arch]
    x = pycode.run(PROMPTS, record=SITE).cache[SITE]
    acts = coder.encode(x)
    latent = int(acts.flatten(0, 1).count_nonzero(0).argmax())
    contribution = acts[..., latent : latent + 1] * coder.W_dec[latent] / coder.cfg.norm_scale
    assert contribution.abs().max() > 0.1
    expected = pycode.run(PROMPTS, edits=[edits.add(SITE, -contribution)]).logits
    got = pycode.run(PROMPTS, edits=[steering.clamp(coder, {latent: 0.0})]).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)


def test_from_feature_is_the_decoder_row_and_clamps_per_row(pycode, coders, tmp_path):
    coder = coders["topk"]
    coder.save(tmp_path / "sae")
    v = steering.from_feature(tmp_path / "sae", 7)
    assert v.sites == [SITE] and v.method == "feature" and v.meta["latent"] == 7
    assert torch.allclose(v.directions[SITE], coder.W_dec[7] / coder.cfg.norm_scale)
    plain = pycode.run(PROMPTS).logits
    rows = torch.tensor([False, True, False, False])
    got = pycode.run(PROMPTS, edits=[steering.clamp(coder, {7: 30.0}, rows=rows)]).logits
    assert torch.equal(got[[0, 2, 3]], plain[[0, 2, 3]]) and (got[1] - plain[1]).abs().max() > 0.1
    with pytest.raises(MechscopeError, match="out of range"):
        steering.clamp(coder, {512: 1.0})
    with pytest.raises(MechscopeError, match="finite"):
        steering.clamp(coder, {3: float("nan")})
