"""The logit lens: its last layer is the model's own output distribution on every family;
positions, vocabulary subsets, translators, saving and bad input."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.lens import LogitLens, logit_lens
from mechscope.report.lens import section

from ..models.tiny import FAMILY_NAMES, tiny_model
from .helpers import check_shapes, minilm_dir, pycode_or_worded, worded_model


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def worded() -> ms.Model:
    return worded_model()


@pytest.mark.parametrize("kind", FAMILY_NAMES)
def test_last_layer_is_the_models_own_distribution(kind, ids):
    model = tiny_model(kind)
    lens = logit_lens(model, ids, targets=[3, 50], k=7)
    probs = model.run(ids).logits.float().softmax(-1)
    assert lens.layers[0] == "embed" and lens.layers[-1] == f"L{model.dims.n_layers - 1}"
    assert lens.sites[-1] == f"blocks.{model.dims.n_layers - 1}.hook_resid_post"
    top = probs.topk(7, dim=-1)
    assert torch.allclose(lens.top_probs[-1], top.values, atol=1e-5)
    assert torch.allclose(lens.target_probs[-1], probs[..., [3, 50]], atol=1e-5)
    assert torch.equal(lens.target_ranks[-1], (probs[..., None, :] > probs[..., [3, 50], None]).sum(-1))
    entropy = -(probs * probs.log()).sum(-1)
    assert torch.allclose(lens.entropy[-1], entropy, atol=1e-4)
    assert lens.kl[-1].abs().max() < 1e-5 and (lens.kl >= 0).all()
    check_shapes(lens)


def test_every_stream_read_through_final_norm_and_unembed(ids):
    model = tiny_model("llama")
    lens = logit_lens(model, ids, targets=[7])
    assert lens.layers == ["embed", "L0 mid", "L0", "L1 mid", "L1"]
    run = model.run(ids, record=lens.sites)
    for i, site in enumerate(lens.sites):
        probs = model.to_logits(run.cache[site]).softmax(-1)
        assert torch.allclose(lens.target_probs[i, ..., 0], probs[..., 7], atol=1e-6), site
        final = run.logits.softmax(-1)
        kl = (final * (final.log() - probs.log())).sum(-1)
        assert torch.allclose(lens.kl[i], kl, atol=1e-5), site


def test_parallel_blocks_have_no_mid_and_include_mid_false(ids):
    assert logit_lens(tiny_model("neox"), ids).layers == ["embed", "L0", "L1"]
    assert logit_lens(tiny_model("gpt2"), ids, include_mid=False).layers == ["embed", "L0", "L1"]


def test_positions_select_per_prompt_and_batching_changes_nothing(worded):
    prompts = ["the cat sat on the mat", "hello there"]
    full = logit_lens(worded, prompts, targets=["the"])
    last = logit_lens(worded, prompts, positions=[0, -1], targets=["the"], batch_size=1)
    lengths = full.mask.sum(-1)
    assert full.mask.shape == (2, int(lengths.max())) and not full.mask[1, -1]
    for b in range(2):
        end = int(lengths[b]) - 1
        assert last.positions[b].tolist() == [0, end]
        assert torch.allclose(last.target_probs[:, b, 1], full.target_probs[:, b, end], atol=1e-5)
        assert torch.allclose(last.top_probs[:, b, 0], full.top_probs[:, b, 0], atol=1e-5)
        assert last.tokens[b, 1] == full.tokens[b, end]
    assert last.text(last.tokens[1, 1]) == "[SEP]"


def test_vocab_subset_is_renormalised(ids):
    model = tiny_model("gemma2")
    subset = [5, 9, 11, 40]
    lens = logit_lens(model, ids, vocab=subset, targets=[9], k=10)
    assert lens.top_probs.shape[-1] == 4 and set(lens.top_ids.unique().tolist()) <= set(subset)
    assert torch.allclose(lens.top_probs.sum(-1), torch.ones(()), atol=1e-5)
    logits = model.run(ids).logits[..., subset].softmax(-1)
    assert torch.allclose(lens.target_probs[-1, ..., 0], logits[..., 1], atol=1e-5)
    with pytest.raises(ms.MechscopeError, match="not in the vocab subset"):
        logit_lens(model, ids, vocab=subset, targets=[10])


def test_layers_option_and_out_of_range(ids):
    model = tiny_model("qwen2")
    lens = logit_lens(model, ids, layers=[-1], include_mid=False)
    assert lens.layers == ["L1"]
    with pytest.raises(ms.MechscopeError, match=r"layer 2 is out of range: this model has 2 layers \(0-1\)"):
        logit_lens(model, ids, layers=[0, 2])
    with pytest.raises(ms.MechscopeError, match="out of range"):
        lens.top_tokens(layer=5)
    with pytest.raises(ms.MechscopeError, match="no stream 'L9'"):
        lens.layer_index("L9")


class Doubler:
    """A translator that records the indices it is called with."""

    def __init__(self):
        self.indices = []

    def __call__(self, resid, index):
        self.indices.append(index)
        return 2 * resid


def test_translator_is_applied_at_block_boundaries(ids):
    model = tiny_model("toy_attn_only")  # no final norm: doubling the stream doubles the logits
    doubler = Doubler()
    lens = logit_lens(model, ids, translator=doubler, targets=[4])
    assert doubler.indices == [0, 1, 2] and lens.translator == "Doubler"
    run = model.run(ids, record=lens.sites)
    for i, site in enumerate(lens.sites):
        expected = (2 * model.to_logits(run.cache[site])).softmax(-1)[..., 4]
        assert torch.allclose(lens.target_probs[i, ..., 0], expected, atol=1e-6)
    with pytest.raises(ms.MechscopeError, match="same shape"):
        logit_lens(model, ids, translator=lambda h, i: h[..., :3])


def test_multi_token_target_shows_its_tokens():
    model = pycode_or_worded()
    text = " hello world" if model.name == "tiny-worded" else " import os"
    pieces = [model.tokenizer.decode([i]) for i in model.tokenizer.encode(text, add_special_tokens=False)]
    assert len(pieces) >= 2
    with pytest.raises(ms.MechscopeError) as err:
        logit_lens(model, "x = 1", targets=[text])
    assert str(err.value) == f"target {text!r} is {len(pieces)} tokens {pieces}: give single tokens"


def test_bad_input(ids):
    model = tiny_model("llama")
    with pytest.raises(ms.MechscopeError, match="no tokenizer: give targets as token ids"):
        logit_lens(model, ids, targets=["a"])
    with pytest.raises(ms.MechscopeError, match="outside the vocabulary"):
        logit_lens(model, ids, targets=[97])
    with pytest.raises(ms.MechscopeError, match="k must be at least 1"):
        logit_lens(model, ids, k=0)
    with pytest.raises(ms.MechscopeError, match="fall outside"):
        logit_lens(model, ids, positions=[6])


def test_encoder_without_lm_head_is_refused():
    model = ms.load(minilm_dir())
    with pytest.raises(ms.MechscopeError, match="no LM head.*logit lens needs one"):
        logit_lens(model, "The cat sat.")
    assert section(model, model.run("The cat sat.")) == ""


def test_save_load_plot_frame(tmp_path, worded):
    lens = logit_lens(worded, ["the cat sat", "a dog"], targets=["the", "dog"], k=3)
    lens.save(tmp_path / "lens")
    back = LogitLens.load(tmp_path / "lens")
    assert sorted(p.name for p in (tmp_path / "lens").iterdir()) == ["cfg.json", "tensors.safetensors"]
    assert back.layers == lens.layers and back.targets == ["the", "dog"] and back.token_strings == lens.token_strings
    assert torch.equal(back.top_ids, lens.top_ids) and torch.equal(back.mask, lens.mask) and back.vocab_ids is None
    assert back.top_tokens("L1", row=0, pos=1) == lens.top_tokens(-1, row=0, pos=1)
    fig = lens.plot(row=1)
    assert len(fig.axes[0].texts) == len(lens.layers) * int(lens.mask[1].sum())
    with pytest.raises(ms.MechscopeError, match="no saved logit_lens"):
        LogitLens.load(tmp_path / "nothing")
    frame = lens.to_frame()  # pandas comes with the test extra
    assert len(frame) == len(lens.layers) * int(lens.mask.sum()) and "p[dog]" in frame
    # each row holds the lens's own numbers for its (layer, prompt, position), each cell once
    seen = set()
    for row in frame.to_dict("records"):
        li, b = lens.layers.index(row["layer"]), row["batch"]
        p = int((lens.positions[b] == row["pos"]).nonzero()[0, 0])
        seen.add((li, b, p))
        assert bool(lens.mask[b, p]) and row["token"] == lens.text(lens.tokens[b, p])
        assert row["top1"] == lens.text(lens.top_ids[li, b, p, 0]) and row["p_top1"] == float(
            lens.top_probs[li, b, p, 0]
        )
        assert row["entropy"] == float(lens.entropy[li, b, p]) and row["kl"] == float(lens.kl[li, b, p])
        assert row["p[the]"] == float(lens.target_probs[li, b, p, 0]) and row["p[dog]"] == float(
            lens.target_probs[li, b, p, 1]
        )
        assert row["rank[dog]"] == int(lens.target_ranks[li, b, p, 1])
    assert len(seen) == len(frame)


def test_report_section(worded):
    run = worded.run("the cat sat on the mat", record="blocks.*.hook_resid_post")
    page = section(worded, run)
    assert page.startswith("<h2>Logit lens</h2>") and "data:image/png;base64" in page
    assert section(worded, None) == ""
