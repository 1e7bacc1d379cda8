"""A dictionary inside a model: reading latents, splicing in reconstructions with and
without the error term, feature readers, and the errors for mismatched sites/features."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import mechscope as ms
from mechscope.dictionary import CoderConfig, build
from mechscope.dictionary.attach import attach
from mechscope.dictionary.features import feature_acts, logit_effect, top_contexts
from mechscope.errors import MechscopeError

from ..conftest import requires_pycode
from ..models.tiny import tiny_model

SITE = "blocks.0.hook_resid_post"


def _coder(d_in=32, arch="topk", site=SITE):
    torch.manual_seed(0)
    coder = build(CoderConfig(arch, d_in, 128, k=8, hook_name=site, norm_scale=0.7))
    with torch.no_grad():
        coder.b_enc.normal_(0, 0.1)
        coder.b_dec.normal_(0, 0.1)
    return coder.eval()


def _tokens(batch=3, pos=10, seed=0):
    return torch.randint(1, 97, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_error_term_keeps_the_forward_and_replacement_changes_it(kind):
    model, coder, tokens = tiny_model(kind), _coder(), _tokens()
    clean = model.run(tokens, record=[SITE])
    with attach(model, coder, replace=True, keep_error=True) as a:
        spliced = model.run(tokens).logits
    torch.testing.assert_close(spliced, clean.logits, atol=1e-6, rtol=0)
    expected = coder.encode(clean.cache[SITE])
    torch.testing.assert_close(a.acts, expected, atol=1e-6, rtol=0)
    with attach(model, coder, replace=True, keep_error=False):
        replaced = model.run(tokens, record=[SITE])
    assert (replaced.logits - clean.logits).abs().max() > 1e-2
    torch.testing.assert_close(replaced.cache[SITE], coder.decode(expected), atol=1e-5, rtol=1e-5)
    after = model.run(tokens).logits  # removed on exit
    torch.testing.assert_close(after, clean.logits, atol=0, rtol=0)


def test_read_only_attach_and_edit_acts():
    model, coder, tokens = tiny_model("gpt2"), _coder(), _tokens()
    clean = model.run(tokens).logits
    reader = attach(model, coder)
    torch.testing.assert_close(model.run(tokens, edits=[reader.edit]).logits, clean, atol=0, rtol=0)
    assert reader.acts.shape == (3, 10, 128) and int((reader.acts > 0).sum(-1).max()) <= 8
    feature = int(reader.acts[0, 3].argmax())

    def ablate(acts):
        return acts.index_fill(-1, torch.tensor([feature]), 0.0)

    with attach(model, coder, replace=True, edit_acts=ablate) as a:
        ablated = model.run(tokens, record=[SITE])
    # the ablated feature's decoder contribution is exactly what left the stream
    delta = model.run(tokens, record=[SITE]).cache[SITE] - ablated.cache[SITE]
    contribution = reader.acts[..., feature, None] * coder.W_dec[feature].detach() / coder.cfg.norm_scale
    torch.testing.assert_close(delta, contribution, atol=1e-5, rtol=1e-4)
    assert a.acts is not None


def test_a_layer_norm_dictionary_splices_in_raw_units():
    """Each position is standardised before encoding: a latent's contribution comes back times its std."""
    model, tokens = tiny_model("gpt2"), _tokens()
    torch.manual_seed(0)
    coder = build(CoderConfig("topk", 32, 128, k=8, hook_name=SITE, input_norm="layer_norm")).eval()
    with torch.no_grad():
        coder.b_dec.normal_(0, 0.1)
    clean = model.run(tokens, record=[SITE])
    x = clean.cache[SITE]
    with attach(model, coder, replace=True, keep_error=True):
        torch.testing.assert_close(model.run(tokens).logits, clean.logits, atol=1e-6, rtol=0)
    with attach(model, coder, replace=True, keep_error=False):
        torch.testing.assert_close(model.run(tokens, record=[SITE]).cache[SITE], coder.predict(x), atol=1e-5, rtol=1e-5)
    acts = coder.encode(x)
    feature = int(acts[0, 3].argmax())
    with attach(model, coder, replace=True, edit_acts=lambda a: a.index_fill(-1, torch.tensor([feature]), 0.0)):
        ablated = model.run(tokens, record=[SITE]).cache[SITE]
    contribution = acts[..., feature, None] * coder.W_dec[feature].detach() * x.std(-1, keepdim=True)
    torch.testing.assert_close(x - ablated, contribution, atol=1e-5, rtol=1e-4)


def test_gradients_reach_the_input_through_the_dictionary():
    model, coder, tokens = tiny_model("llama"), _coder(), _tokens()
    with attach(model, coder, replace=True) as a:
        run = model.run(tokens, grad=True)
        run.logits[:, -1, 5].sum().backward()
    assert a.acts.requires_grad and coder.W_enc.grad is not None and coder.W_enc.grad.abs().sum() > 0


def test_mismatches_are_errors():
    model = tiny_model("gpt2")
    with pytest.raises(MechscopeError, match=r"d_in=16.*blocks.0.hook_resid_post.*width 32"):
        attach(model, _coder(d_in=16))
    with pytest.raises(MechscopeError, match="unknown site"):
        attach(model, _coder(), "blocks.9.hook_resid_post")
    with pytest.raises(MechscopeError, match="pass site="):
        attach(model, _coder(site=""))
    with pytest.raises(MechscopeError, match="out of range"):
        logit_effect(model, _coder(), 128)
    with pytest.raises(MechscopeError, match="out of range"):
        top_contexts(model, _coder(), _tokens(), features=[3, -1])


def test_flattened_head_sites():
    """hook_z [batch, pos, head, d_head] is read as [batch, pos, head * d_head]."""
    model, tokens = tiny_model("gpt2"), _tokens()
    coder = _coder(site="blocks.1.attn.hook_z")
    clean = model.run(tokens, record=["blocks.1.attn.hook_z"])
    with attach(model, coder, replace=True):
        torch.testing.assert_close(model.run(tokens).logits, clean.logits, atol=1e-6, rtol=0)
    z = clean.cache["blocks.1.attn.hook_z"]
    torch.testing.assert_close(
        feature_acts(model, coder, tokens), coder.encode(z.reshape(3, 10, 32)), atol=1e-6, rtol=0
    )


def test_top_contexts_match_a_brute_force_search(tmp_path):
    model, coder, tokens = tiny_model("gpt2"), _coder(), _tokens(batch=7, pos=12, seed=3)
    acts = feature_acts(model, coder, tokens)  # [7, 12, 128]
    features = [int(f) for f in (acts > 0).sum((0, 1)).argsort(descending=True)[:3]]
    top = top_contexts(model, coder, tokens, features, k=4, context=2, batch_size=3)
    for i, f in enumerate(features):
        expected = acts[..., f].flatten().topk(4).values
        torch.testing.assert_close(top.values[i], expected, atol=1e-6, rtol=0)
        for row in top.rows(f):
            assert abs(float(acts[row["sequence"], row["pos"], f]) - row["value"]) < 1e-6
            assert row["tokens"][row["centre"]] == str(int(tokens[row["sequence"], row["pos"]]))
            assert len(row["tokens"]) <= 5
    assert "feature" in top.to_html() and len(top.rows()) == 12
    top.save(tmp_path / "top")
    back = type(top).load(tmp_path / "top")
    assert back.rows() == top.rows()


def test_logit_effect_is_the_normed_decoder_row_through_the_unembedding(tmp_path):
    model, coder = tiny_model("llama"), _coder()
    with torch.no_grad():
        model.module(model.adapter.final_norm).weight.uniform_(0.5, 1.5)
    effect = logit_effect(model, coder, 7, k=5)
    gain = model.module(model.adapter.final_norm).weight.detach()
    expected = (coder.W_dec[7].detach() * gain) @ model.W_U.detach()
    torch.testing.assert_close(effect.logits, expected, atol=1e-5, rtol=1e-5)
    assert [v for _, v in effect.top] == sorted((v for _, v in effect.top), reverse=True)
    assert effect.top[0][1] == pytest.approx(float(expected.max()), abs=1e-5)
    assert effect.bottom[0][1] == pytest.approx(float(expected.min()), abs=1e-5)
    torch.testing.assert_close(coder.direction(7).norm(), torch.tensor(1.0))
    effect.save(tmp_path / "effect")
    back = type(effect).load(tmp_path / "effect")
    assert back.top == effect.top and torch.equal(back.logits, effect.logits)
    assert len(effect.plot().axes[0].patches) == 10


@requires_pycode
def test_prompts_on_a_zoo_model_with_a_tokenizer():
    """zoo:pycode (GQA Llama with a tokenizer): padded prompt batches, exact forward with the
    error term, and windows that are the prompt's own token strings."""
    model = ms.load("zoo:pycode")
    site = "blocks.2.hook_resid_post"
    prompts = ["def add(a, b):\n    return a + b\n", "import os\n", "class Foo:\n    x = 1\n"]
    clean = model.run(prompts, record=[site])
    torch.manual_seed(0)
    coder = build(CoderConfig("topk", model.dims.d_model, 256, k=8, hook_name=site)).eval()
    with attach(model, coder, replace=True):
        torch.testing.assert_close(model.run(prompts).logits, clean.logits, atol=1e-6, rtol=0)
    acts = feature_acts(model, coder, prompts)
    assert acts.shape == (3, clean.tokens.shape[1], 256)
    assert float(acts[~clean.mask.bool()].abs().max()) == 0  # padding reads as silent
    feature = int(acts.sum((0, 1)).argmax())
    top = top_contexts(model, coder, prompts, feature, k=3, context=3, batch_size=2)
    for row in top.rows(feature):
        assert row["tokens"][row["centre"]] == clean.str_tokens(row["sequence"])[row["pos"]]


def test_a_dictionary_from_another_model_attaches_with_a_warning(caplog):
    model, tokens = tiny_model("gpt2"), _tokens()
    for trained_on, warned in [("some-other-model", True), (model.name, False), ("", False)]:
        coder = _coder()
        coder.cfg = dataclasses.replace(coder.cfg, model_name=trained_on)
        caplog.clear()
        with caplog.at_level("WARNING", logger="mechscope.dictionary.attach"), attach(model, coder):
            model.run(tokens)
        assert ("trained on some-other-model" in caplog.text) == warned
