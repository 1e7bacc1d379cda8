"""Direct logit attribution: the components add up to the model's own logit (difference)
on every decoder family; per-prompt targets, positions, refusals, saving."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.attribution import DirectLogitAttribution, direct_logit_attribution

from ..lens.helpers import check_shapes, minilm_dir, pycode_or_worded
from ..models.tiny import ENCODER_NAMES, FAMILY_NAMES, tiny_model

DECODERS = [k for k in FAMILY_NAMES if k not in ENCODER_NAMES]


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 97, (3, 7), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", DECODERS)
def test_components_sum_to_the_logit_difference(kind, ids):
    model = tiny_model(kind)
    result = direct_logit_attribution(model, ids, 3, vs=5)
    logits = model.run(ids).logits
    output = logits[..., 3] - logits[..., 5]
    assert torch.allclose(result.contributions.sum(0), result.logit, atol=1e-4)
    assert torch.allclose(result.output_logit, output, atol=1e-5)
    cap = getattr(model.hf.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2: the components add up to the logits before soft-capping
        pre = model.hf.lm_head(model.hf(ids, output_hidden_states=True).hidden_states[-1])
        assert torch.allclose(result.logit, pre[..., 3] - pre[..., 5], atol=1e-4)
        capped = torch.tanh(pre / cap) * cap
        assert torch.allclose(capped[..., 3] - capped[..., 5], output, atol=1e-5)
    else:
        assert torch.allclose(result.contributions.sum(0), output, atol=1e-4)
    d = model.dims
    n_heads = sum(h >= 0 for h in result.head_of)
    assert n_heads == d.n_layers * d.n_heads and len(result.labels) == result.contributions.shape[0]
    assert ("pos_embed" in result.labels) == ("hook_pos_embed" in model.table.by_name)
    assert result.heads(row=2, pos=-1).shape == (d.n_layers, d.n_heads)
    assert sum(label.endswith(" mlp") for label in result.labels) == (d.n_layers if d.d_mlp else 0)
    check_shapes(result)


def test_single_token_and_per_prompt_targets(ids):
    model = tiny_model("llama")
    targets = [4, 9, 60]
    result = direct_logit_attribution(model, ids, targets, positions=[-1, 2])
    logits = model.run(ids).logits
    for b, t in enumerate(targets):
        assert torch.allclose(result.contributions[:, b].sum(0), logits[b, [6, 2], t], atol=1e-4)
    assert result.positions[0].tolist() == [6, 2] and result.vs_ids is None
    with pytest.raises(ms.MechscopeError, match="2 tokens for 3 prompts"):
        direct_logit_attribution(model, ids, [4, 9])


def test_heads_grid_top_and_plot(ids, tmp_path):
    model = tiny_model("gpt2")
    result = direct_logit_attribution(model, ids, 3, 5, positions=-1)
    grid = result.heads(row=1, pos=0)
    assert grid.shape == (2, 4)
    assert float(grid[1, 2]) == float(result.contributions[result.labels.index("L1H2"), 1, 0])
    top = result.top(3, row=0, pos=0)
    assert len(top) == 3 and abs(top[0][1]) >= abs(top[1][1]) >= abs(top[2][1])
    fig = result.plot(row=0, pos=0, k=5)
    assert len(fig.axes[0].patches) == 5
    result.save(tmp_path / "dla")
    back = DirectLogitAttribution.load(tmp_path / "dla")
    assert back.labels == result.labels and torch.equal(back.contributions, result.contributions)
    assert back.metric() == "logit '3' - logit '5'"


def test_text_targets_and_multi_token_error():
    model = pycode_or_worded()
    prompt, candidates, bad = (
        ("the cat sat on the", ["mat", "dog"], " hello world")
        if model.name == "tiny-worded"
        else ("def add(a, b):\n    return", [" a", " b", " x", " self", "a", "b"], " import os")
    )
    target, vs = [c for c in candidates if len(model.tokenizer.encode(c, add_special_tokens=False)) == 1][:2]
    result = direct_logit_attribution(model, prompt, target, vs, positions=-1)
    assert torch.allclose(result.contributions.sum(0), result.output_logit, atol=1e-4)
    with pytest.raises(ms.MechscopeError, match=r"target .* is \d+ tokens \[.*\]: give single tokens"):
        direct_logit_attribution(model, prompt, bad)


def test_post_ln_and_headless_models_are_refused(ids):
    with pytest.raises(ms.MechscopeError, match="post-LN.*not a sum of components"):
        direct_logit_attribution(tiny_model("bert"), ids, 3)
    with pytest.raises(ms.MechscopeError, match="no LM head"):
        direct_logit_attribution(ms.load(minilm_dir()), "The cat sat.", "cat")
