"""Latent language: a planted 'thinks in English, answers in French' toy, agreement with
the model's own output at the last layer, confidence bands and bad input."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.lens import LatentLanguage, latent_language

from ..models.tiny import tiny_model
from .helpers import check_shapes, minilm_dir

EN, FR = 1, 2


def planted() -> ms.Model:
    """A norm-free attention-only toy whose first block writes 'English' (token 1's
    unembedding direction) and whose second block turns it into 'French' (token 2's)."""
    model = tiny_model("toy_attn_only")
    blocks = model.hf.blocks
    with torch.no_grad():
        w_u = model.hf.unembed.weight  # [vocab, d_model]
        w_u[:, :2] = 0
        w_u[EN, 0], w_u[FR, 1] = 1.0, 1.0
        for block in blocks:
            block.attn.o.weight.zero_()
        blocks[0].attn.o.bias.copy_(torch.tensor([25.0, 0] + [0] * 30))
        blocks[1].attn.o.bias.copy_(torch.tensor([-25.0, 25.0] + [0] * 30))
    return model


def test_planted_latent_english():
    model = planted()
    prompts = torch.randint(3, 97, (5, 6), generator=torch.Generator().manual_seed(0))
    result = latent_language(model, prompts, {"en": [EN] * 5, "fr": [[FR, 40]] * 5})
    assert result.layers == ["embed", "L0", "L1"] and result.languages == ["en", "fr"]
    assert result.mean[0].max() < 0.1  # the embeddings say neither
    assert result.mean[1, 0] > 0.99 and result.mean[1, 1] < 0.01  # block 0: English
    assert result.mean[2, 1] > 0.99 and result.mean[2, 0] < 0.01  # block 1: French
    assert (result.lower <= result.mean + 1e-6).all() and (result.mean <= result.upper + 1e-6).all()
    check_shapes(result)


def test_last_layer_matches_the_output_and_masses_are_disjoint():
    model = tiny_model("llama")
    prompts = torch.randint(0, 97, (4, 7), generator=torch.Generator().manual_seed(3))
    answers = {"a": [[1, 2], [3], [4, 5, 6], [7]], "b": [[8], [9, 10], [11], [12, 13]]}
    result = latent_language(model, prompts, answers, include_mid=True)
    probs = model.run(prompts).logits[:, -1].softmax(-1)
    for li, language in enumerate(answers):
        direct = torch.stack([probs[b, ids].sum() for b, ids in enumerate(answers[language])])
        assert torch.allclose(result.mass[-1, :, li], direct, atol=1e-6)
    assert (result.mass.sum(-1) <= 1 + 1e-6).all() and (result.mass >= 0).all()
    entropy = -(probs * probs.log()).sum(-1)
    assert torch.allclose(result.entropy[-1], entropy, atol=1e-4)
    assert result.layers == ["embed", "L0 mid", "L0", "L1 mid", "L1"]


def test_confidence_interval_is_student_t():
    from scipy import stats

    model = tiny_model("qwen2")
    prompts = torch.randint(0, 97, (6, 5), generator=torch.Generator().manual_seed(4))
    result = latent_language(model, prompts, {"x": [[5, 6, 7]] * 6}, confidence=0.9)
    mass = result.mass[..., 0]
    half = stats.t.ppf(0.95, 5) * mass.std(1) / 6**0.5
    assert torch.allclose(result.upper[:, 0], (mass.mean(1) + half).clamp(max=1), atol=1e-5)
    single = latent_language(model, prompts[:1], {"x": [[5]]})
    assert torch.equal(single.lower, single.mean) and torch.equal(single.upper, single.mean)


def test_bad_input():
    model = tiny_model("llama")
    prompts = torch.randint(0, 97, (2, 5))
    with pytest.raises(ms.MechscopeError, match="2 entries for 3 prompts"):
        latent_language(model, torch.randint(0, 97, (3, 5)), {"en": [1, 2]})
    with pytest.raises(ms.MechscopeError, match="answers both 'en' and 'fr'"):
        latent_language(model, prompts, {"en": [1, 2], "fr": [3, [2, 4]]})
    with pytest.raises(ms.MechscopeError, match="layer 5 is out of range"):
        latent_language(model, prompts, {"en": [1, 2]}, layers=[5])
    with pytest.raises(ms.MechscopeError, match="answers is empty"):
        latent_language(model, prompts, {})
    with pytest.raises(ms.MechscopeError, match="no LM head"):
        latent_language(ms.load(minilm_dir()), "a b c", {"en": ["cat"]})


def test_translator_save_plot(tmp_path):
    model = tiny_model("gpt2")
    prompts = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(5))
    answers = {"en": [1, 2, 3], "de": [4, 5, 6]}
    plain = latent_language(model, prompts, answers)
    same = latent_language(model, prompts, answers, translator=lambda h, i: h)
    assert torch.allclose(plain.mass, same.mass) and same.translator == "function"
    fig = plain.plot(colors={"en": "#ff7f0e"})
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["en", "de"]
    plain.save(tmp_path / "lang")
    back = LatentLanguage.load(tmp_path / "lang")
    assert torch.equal(back.mass, plain.mass) and back.languages == ["en", "de"] and back.confidence == 0.95
