"""Mixture-of-experts families: router logits against the model's own, and what is
(and is not) exposed per expert."""

from __future__ import annotations

import pytest
import torch

from mechscope import edits
from mechscope.errors import MechscopeError

from .tiny import MOE_NAMES, tiny_model

DTYPES = {"f32": torch.float32, "f64": torch.float64}


@pytest.fixture(scope="module", params=[(k, d) for k in MOE_NAMES for d in DTYPES], ids=lambda p: f"{p[0]}-{p[1]}")
def model(request):
    kind, dtype = request.param
    return tiny_model(kind, dtype=DTYPES[dtype])


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(1))


def test_router_logits_equal_the_models_own(model, ids):
    own = model.hf(ids, output_router_logits=True).router_logits  # per layer, [batch * pos, expert]
    run = model.run(ids, record="blocks.*.mlp.hook_router_logits")
    assert len(own) == model.dims.n_layers
    for layer, logits in enumerate(own):
        recorded = run.cache[f"blocks.{layer}.mlp.hook_router_logits"]
        assert recorded.shape == (*ids.shape, model.adapter.n_experts)
        assert torch.equal(recorded, logits.view(*ids.shape, -1))


def test_router_logits_at_positions_and_with_padding(model, ids):
    """Unflattening follows the rows actually run: a position subset, a padded batch."""
    full = model.run(ids, record="blocks.1.mlp.hook_router_logits").cache["blocks.1.mlp.hook_router_logits"]
    last = model.run(ids, record="blocks.1.mlp.hook_router_logits", positions=-1).cache[
        "blocks.1.mlp.hook_router_logits"
    ]
    assert torch.equal(last[:, 0], full[:, -1])
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    padded = model.run(ids, record="blocks.1.mlp.hook_router_logits", attention_mask=mask)
    assert padded.cache["blocks.1.mlp.hook_router_logits"].shape == full.shape


def test_mlp_out_is_the_moe_blocks_output(model, ids):
    run = model.run(ids, record=["blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out"])
    block = model.block_module(0, "mlp")
    normed = model.block_module(0, "post_attention_layernorm")(run.cache["blocks.0.hook_resid_mid"])
    assert torch.allclose(block(normed), run.cache["blocks.0.hook_mlp_out"], atol=1e-6)


def test_router_logits_are_read_only_and_neurons_unavailable(model, ids):
    with pytest.raises(MechscopeError, match="recorded but not edited"):
        model.run(ids, edits=[edits.zero("blocks.0.mlp.hook_router_logits")])
    with pytest.raises(MechscopeError, match="fused experts module"):
        model.run(ids, record="blocks.0.mlp.hook_post")
    with pytest.raises(MechscopeError, match="mixture-of-experts"):
        model.W_out(0)


def test_expert_weights_are_the_routers_top_k_softmax(model, ids):
    """Dense routing weights: top-k of the softmax of the router logits, renormalised where the
    family renormalises, zero for the experts not chosen."""
    run = model.run(ids, record=["blocks.1.mlp.hook_router_logits", "blocks.1.mlp.hook_expert_weights"])
    logits = run.cache["blocks.1.mlp.hook_router_logits"]
    weights = run.cache["blocks.1.mlp.hook_expert_weights"]
    k = model.hf.config.num_experts_per_tok
    assert weights.shape == logits.shape
    assert ((weights != 0).sum(-1) == k).all()
    top, chosen = logits.float().softmax(-1).topk(k, dim=-1)
    if getattr(model.hf.config, "norm_topk_prob", True):
        top = top / top.sum(-1, keepdim=True)
    by_hand = torch.zeros_like(weights).scatter(-1, chosen, top.to(weights.dtype))
    torch.testing.assert_close(weights, by_hand, rtol=1e-6, atol=1e-7)


def test_zero_ablating_an_expert_equals_masking_it_in_the_router_by_hand(model, ids):
    """Scaling expert e's routing weight to 0 removes exactly its output: the same logits as a
    raw torch hook on the router that zeroes e's top-k weight, and not the unedited logits."""
    layer, expert = 1, 2
    n = model.adapter.n_experts
    mask = torch.ones(n, dtype=torch.float32)
    mask[expert] = 0
    ablated = model.run(ids, edits=[edits.scale(f"blocks.{layer}.mlp.hook_expert_weights", mask)]).logits

    def by_hand(module, args, output):
        logits, weights, chosen = output
        return logits, weights.masked_fill(chosen == expert, 0.0), chosen

    handle = model.block_module(layer, "mlp").gate.register_forward_hook(by_hand)
    try:
        with torch.no_grad():
            expected = model.hf(ids).logits
    finally:
        handle.remove()
    chosen = model.run(ids, record=f"blocks.{layer}.mlp.hook_expert_weights").cache[
        f"blocks.{layer}.mlp.hook_expert_weights"
    ]
    assert (chosen[..., expert] != 0).any(), "the test needs a token routed to the ablated expert"
    assert torch.equal(ablated, expected)
    assert not torch.allclose(ablated, model.run(ids).logits)


def test_an_edit_cannot_route_to_an_unchosen_expert(model, ids):
    """Writing weights for experts the router did not choose has no effect (documented)."""
    site = "blocks.0.mlp.hook_expert_weights"
    weights = model.run(ids, record=site).cache[site]
    unchosen_only = model.run(ids, edits=[edits.add(site, (weights == 0).to(weights.dtype) * 5.0)]).logits
    assert torch.equal(unchosen_only, model.run(ids).logits)
