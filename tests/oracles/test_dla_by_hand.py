"""Direct logit attribution, component by component, against projections computed by hand:
each head's result (`model.head_results`, which sums to hook_attn_out) and each other
component pushed through the final norm with its scale frozen at the real final stream,
then dotted with W_U[:, target] - W_U[:, vs]. "The components sum to the total" cannot see
heads listed in the wrong order; this can, on models whose heads differ."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mechscope as ms
from mechscope.attribution import direct_logit_attribution
from mechscope.plots import visible

from ..models.tiny import tiny_model

IDS = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(3))


def _frozen_final_norm(model, resid):
    """h -> the final norm applied to h with the scale (and centring) of `resid`, no bias."""
    path = model.adapter.final_norm
    module = model.module(path) if path else None
    if module is None or isinstance(module, nn.Identity):
        return lambda h: h
    eps = getattr(module, "eps", None) or getattr(module, "variance_epsilon", None)
    weight = module.weight.detach().float()
    if isinstance(module, nn.LayerNorm):
        var = resid.var(-1, unbiased=False, keepdim=True)
        return lambda h: (h - h.mean(-1, keepdim=True)) / torch.sqrt(var + eps) * weight
    ms_ = resid.pow(2).mean(-1, keepdim=True)  # RMSNorm
    return lambda h: h / torch.sqrt(ms_ + eps) * weight


def _expected(model, ids, target, vs):
    """label -> [batch, pos] contribution, computed from recorded activations by hand."""
    n = model.dims.n_layers
    record = ["hook_embed", "blocks.0.hook_resid_pre", f"blocks.{n - 1}.hook_resid_post", "blocks.*.attn.hook_z"]
    if model.dims.d_mlp:
        record.append("blocks.*.hook_mlp_out")
    with torch.no_grad():
        run = model.run(ids, record=record)
    cache = {k: v.double() for k, v in run.cache.items()}
    norm = _frozen_final_norm(model, cache[f"blocks.{n - 1}.hook_resid_post"])
    w = (model.W_U[:, target] - model.W_U[:, vs]).detach().double()

    def onto(x):
        return norm(x) @ w

    out = {}
    if "hook_pos_embed" in model.table.by_name:
        out["embed"] = onto(cache["hook_embed"])
        out["pos_embed"] = onto(cache["blocks.0.hook_resid_pre"] - cache["hook_embed"])
    else:
        out["embed"] = onto(cache["blocks.0.hook_resid_pre"])
    for layer in range(n):
        with torch.no_grad():
            per_head, bias = model.head_results(run.cache[f"blocks.{layer}.attn.hook_z"], layer)
        for head in range(model.dims.n_heads):
            out[f"L{layer}H{head}"] = onto(per_head[:, :, head].double())
        out[f"L{layer} attn bias"] = onto(bias.double().expand(*ids.shape, -1))
        if model.dims.d_mlp:
            out[f"L{layer} mlp"] = onto(cache[f"blocks.{layer}.hook_mlp_out"])
    return out


@pytest.mark.parametrize("name", ["zoo:induction", "gpt2", "llama", "toy"])
def test_each_component_matches_its_projection_by_hand(name):
    model = ms.load(name) if name.startswith("zoo:") else tiny_model(name)
    ids = IDS % model.dims.d_vocab
    target, vs = 7, 11
    result = direct_logit_attribution(model, ids, target, vs)
    expected = _expected(model, ids, target, vs)
    n_layers, n_heads = model.dims.n_layers, model.dims.n_heads
    for label, value in expected.items():
        i = result.labels.index(label)
        got = result.contributions[i].double()
        assert torch.allclose(got, value, atol=1e-4, rtol=1e-4), label
        if label.startswith("L") and "H" in label:
            layer, head = map(int, label[1:].split("H"))
            assert (result.layer_of[i], result.head_of[i]) == (layer, head)
            assert float(result.heads(row=1, pos=4)[layer, head]) == pytest.approx(float(got[1, 4]), abs=1e-6)
        elif label in ("embed", "pos_embed"):
            assert (result.layer_of[i], result.head_of[i]) == (-1, -1)
        else:
            assert result.layer_of[i] == int(label[1:].split()[0]) and result.head_of[i] == -1
    # heads are distinguishable here, so a permuted head order could not pass the loop above
    for layer in range(n_layers):
        heads = torch.stack([expected[f"L{layer}H{h}"] for h in range(n_heads)])
        assert min(float((heads[a] - heads[b]).abs().max()) for a in range(n_heads) for b in range(a)) > 1e-3
    # labels: the embeddings, then per layer its heads in order, its attention bias and MLP
    heads_in_order = [label for label in result.labels if "H" in label]
    assert heads_in_order == [f"L{i}H{h}" for i in range(n_layers) for h in range(n_heads)]
    assert result.labels[0] == "embed"
    assert torch.allclose(result.contributions.sum(0), result.logit, atol=1e-4)
    logits = model.run(ids).logits.detach()
    assert torch.allclose(result.output_logit, logits[..., target] - logits[..., vs], atol=1e-5)
    assert result.target_ids.tolist() == [target] * 2 and result.vs_ids.tolist() == [vs] * 2


def test_final_biases_by_hand():
    model = tiny_model("gpt2")  # LayerNorm with a bias; GPT-2's head has no bias
    result = direct_logit_attribution(model, IDS % 97, 7, 11)
    norm = model.module(model.adapter.final_norm)
    w = (model.W_U[:, 7] - model.W_U[:, 11]).detach()
    i = result.labels.index("final norm bias")
    assert result.layer_of[i] == model.dims.n_layers and result.head_of[i] == -1
    assert torch.allclose(result.contributions[i], (norm.bias.detach() @ w).expand(2, 9), atol=1e-6)
    assert "unembed bias" not in result.labels


def test_top_lists_the_largest_magnitudes():
    model = ms.load("zoo:induction")
    result = direct_logit_attribution(model, IDS, 7, 11, positions=-1)
    values = result.contributions[:, 1, 0]
    top = result.top(4, row=1, pos=0)
    order = values.abs().argsort(descending=True)[:4].tolist()
    assert [label for label, _ in top] == [result.labels[i] for i in order]
    assert [v for _, v in top] == pytest.approx([float(values[i]) for i in order])
    assert result.top(0) == []
    with pytest.raises(ms.MechscopeError, match="k must be 0 or more"):
        result.top(-1)


def test_frame_rows_are_the_contributions():
    model = ms.load("zoo:induction")
    ids = torch.tensor([[5, 9, 13, 5, 9], [7, 8, 2, 7, 8]])
    result = direct_logit_attribution(model, ids, 13, 2, positions=[-1, 1])
    frame = result.to_frame()
    assert len(frame) == len(result.labels) * int(result.mask.sum())
    for row in frame.to_dict("records"):
        i = result.labels.index(row["component"])
        p = int((result.positions[row["batch"]] == row["pos"]).nonzero()[0, 0])
        assert row["contribution"] == float(result.contributions[i, row["batch"], p])
        assert (row["layer"], row["head"]) == (result.layer_of[i], result.head_of[i])
    assert sorted(set(zip(frame["batch"], frame["pos"]))) == [(0, 1), (0, 4), (1, 1), (1, 4)]


def test_views_and_defaults_read_the_right_cells():
    model = tiny_model("llama")
    ids = IDS[:, :5] % 97
    result = direct_logit_attribution(model, ids, [7, 8], vs=[11, 12])
    assert result.metric() == "logit '7' - logit '11'" and result.metric(1) == "logit '8' - logit '12'"
    assert result.text(12) == "12" and result.text(96) == "96"  # no tokenizer: ids as text
    assert result.top() == result.top(10, 0, -1) and len(result.top()) == 10
    assert torch.equal(result.heads(), result.heads(0, -1)) and not torch.equal(result.heads(), result.heads(1, -1))
    with pytest.raises(ms.MechscopeError, match=r"^vs id 200 is outside the vocabulary \(0-96\)$"):
        direct_logit_attribution(model, ids, [7, 8], vs=[11, 200])
    with pytest.raises(ms.MechscopeError, match=r"^target id 97 is outside the vocabulary"):
        direct_logit_attribution(model, ids, 97)
    alone = direct_logit_attribution(model, ids, 7)
    assert alone.metric() == "logit '7'" and alone.vs_ids is None
    with pytest.raises(ms.MechscopeError, match=r"^vs id 200 is outside"):
        direct_logit_attribution(model, ids, 7, vs=200)
    # a chart at another row and position: its bars are that column's contributions; a zero
    # contribution (llama's attention has no output bias) is drawn in the positive colour
    from matplotlib.colors import to_hex

    ax = result.plot(row=1, pos=2, k=len(result.labels)).axes[0]
    top = result.top(len(result.labels), 1, 2)[::-1]
    assert [t.get_text() for t in ax.get_yticklabels()] == [label for label, _ in top]
    assert [p.get_width() for p in ax.patches] == pytest.approx([v for _, v in top])
    zero = [i for i, (label, v) in enumerate(top) if v == 0]
    assert zero and all(to_hex(ax.patches[i].get_facecolor()) == "#4c78a8" for i in zero)
    assert torch.allclose(alone.logit, model.run(ids).logits[..., 7], atol=1e-4)


def test_plot_draws_the_top_contributions_by_sign():
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure

    model = ms.load("zoo:pycode")
    result = direct_logit_attribution(model, "def add(a, b):\n    return", " a", " x")
    assert len(result.labels) > 20 and result.text(result.vs_ids[0]) == " x"  # " x" is not in the prompt
    fig = result.plot()  # row 0, last position, 20 bars
    ax = fig.axes[0]
    top = result.top(20, 0, -1)[::-1]  # largest at the top of the chart
    assert [t.get_text() for t in ax.get_yticklabels()] == [label for label, _ in top]
    assert [p.get_width() for p in ax.patches] == pytest.approx([v for _, v in top])
    assert [to_hex(p.get_facecolor()) for p in ax.patches] == ["#4c78a8" if v >= 0 else "#e45756" for _, v in top]
    assert {to_hex(p.get_facecolor()) for p in ax.patches} == {"#4c78a8", "#e45756"}  # both signs drawn
    assert ax.get_xlabel() == "direct contribution to logit ' a' - logit ' x' (logit units)"
    last = int(result.positions[0, -1])
    assert (
        ax.get_title() == f"zoo:pycode, position {last} ({visible(result.text(result.tokens[0, -1]))}): "
        f"total {float(result.logit[0, -1]):.3f}"
    )
    assert any(list(line.get_xdata()) == [0, 0] for line in ax.lines)  # the zero line
    own = Figure().subplots()
    assert result.plot(k=3, ax=own) is own.figure and len(own.patches) == 3


def test_unembed_bias_and_single_target_by_hand():
    """An LM head with a (non-zero) bias: its share is b_U[target] - b_U[vs], and the total
    and the model's own output logit still agree."""
    base = tiny_model("gpt2")
    hf = base.hf
    head = nn.Linear(32, 97, bias=True)
    with torch.no_grad():
        head.weight.copy_(hf.lm_head.weight)
        head.bias.copy_(torch.randn(97, generator=torch.Generator().manual_seed(8)))
    hf.lm_head = head
    hf.config.tie_word_embeddings = False
    model = ms.Model(hf, None, name="tiny-gpt2-biased")
    ids = IDS[:, :5] % 97
    result = direct_logit_attribution(model, ids, 7, 11)
    i = result.labels.index("unembed bias")
    assert (result.layer_of[i], result.head_of[i]) == (model.dims.n_layers, -1)
    assert torch.allclose(result.contributions[i], (head.bias[7] - head.bias[11]).detach().expand(2, 5))
    logits = model.run(ids).logits.detach()
    assert torch.allclose(result.logit, logits[..., 7] - logits[..., 11], atol=1e-4)
    assert torch.allclose(result.contributions.sum(0), result.logit, atol=1e-4)
    alone = direct_logit_attribution(model, ids, 7)
    assert torch.allclose(alone.output_logit, logits[..., 7], atol=1e-5)
    assert torch.allclose(alone.logit, logits[..., 7], atol=1e-4)
    assert torch.allclose(alone.contributions[i], head.bias[7].detach().expand(2, 5))


def test_post_ln_refusal_names_the_family():
    with pytest.raises(
        ms.MechscopeError,
        match=r"^BERT.* is post-LN \(the residual stream is renormalised after each "
        r"sublayer\), so its final stream is not a sum of components: direct logit attribution needs a "
        r"pre-norm model$",
    ):
        direct_logit_attribution(tiny_model("bert"), IDS[:, :5] % 97, 3)
