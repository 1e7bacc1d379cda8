"""Edge-patching engine oracle: no edge removed reproduces the clean logits, every edge
removed the corrupted logits; the graph has the nodes and edges the design says."""

import pytest
import torch

import mechscope as ms
from mechscope.circuits import EdgePatcher, Graph
from mechscope.errors import MechscopeError
from mechscope.heads import repeated_random_tokens
from tests.models.tiny import tiny_model

KINDS = ["gpt2", "neox", "neox_seq", "llama", "mistral", "gemma2", "toy", "toy_attn_only"]


def _pair(model, batch=3, pos=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, model.dims.d_vocab, (batch, pos), generator=gen)
    corrupt = torch.randint(1, model.dims.d_vocab, (batch, pos), generator=gen)
    return clean, corrupt


@pytest.mark.parametrize("kind", KINDS)
def test_engine_reproduces_clean_and_corrupt(kind):
    model = tiny_model(kind)
    clean, corrupt = _pair(model)
    patcher = EdgePatcher(model)
    ablated = patcher.sender_values(corrupt)
    with torch.no_grad():
        want_clean, want_corrupt = model.run(clean).logits, model.run(corrupt).logits
        none = patcher.run(clean, ablated, torch.zeros_like(patcher.graph.allowed))
        every = patcher.run(clean, ablated, patcher.graph.allowed)
    scale = want_clean.abs().max()
    assert torch.allclose(none, want_clean, atol=1e-5 * max(1.0, float(scale)), rtol=0)
    assert torch.allclose(every, want_corrupt, atol=2e-5 * max(1.0, float(scale)), rtol=1e-4)
    assert (every - want_clean).abs().max() > 1e-3  # the two runs really differ


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma2", "neox"])
def test_senders_sum_to_final_residual(kind):
    """embed + every head + every MLP (+ attention biases) == the last resid_post."""
    model = tiny_model(kind)
    clean, _ = _pair(model)
    values = EdgePatcher(model).sender_values(clean)
    L = model.dims.n_layers
    run = model.run(clean, record=[f"blocks.{L - 1}.hook_resid_post"])
    bias = sum(model.b_O(layer) for layer in range(L)) if model.adapter.attn_post_norm is None else 0
    assert torch.allclose(values.sum(2) + bias, run.cache[f"blocks.{L - 1}.hook_resid_post"], atol=1e-4)


def test_graph_gqa_receivers_and_parallel_edges():
    llama = Graph.from_model(tiny_model("llama"))  # 4 heads, 2 KV heads, sequential
    assert "a1.kv1.k" in llama.receivers and "a1.h3.k" not in llama.receivers
    assert llama.receivers.count("logits") == 1 and len(llama.senders) == 1 + 2 * 5
    assert ("a0.h2", "m0") in llama.edges and ("a1.h0", "m1") in llama.edges  # MLP reads its own layer's heads
    neox = Graph.from_model(tiny_model("neox"))  # parallel: MLP reads resid_pre only
    assert ("a0.h2", "m0") not in neox.edges and ("m0", "a1.h0.q") in neox.edges
    toy = Graph.from_model(tiny_model("toy_attn_only"))
    assert not any(n.startswith("m") for n in toy.senders)
    # heads: 12 receivers in layer 0 (from embed), 12 in layer 1 (from 5 senders), logits from 9
    assert len(toy.edges) == 12 * 1 + 12 * 5 + 9


def test_zoo_induction_engine():
    model = ms.load("zoo:induction")
    tokens = repeated_random_tokens(model.dims.d_vocab, 10, 4, seed=1, prefix_token=0)
    corrupt = repeated_random_tokens(model.dims.d_vocab, 10, 4, seed=2, prefix_token=0)
    patcher = EdgePatcher(model)
    ablated = patcher.sender_values(corrupt)
    with torch.no_grad():
        none = patcher.run(tokens, ablated, torch.zeros_like(patcher.graph.allowed))
        every = patcher.run(tokens, ablated, patcher.graph.allowed)
        assert torch.allclose(none, model.run(tokens).logits, atol=1e-5)
        assert torch.allclose(every, model.run(corrupt).logits, atol=1e-4)


def test_bad_removed_mask():
    model = tiny_model("toy_attn_only")
    patcher = EdgePatcher(model)
    clean, corrupt = _pair(model)
    with pytest.raises(MechscopeError, match="not edges"):
        patcher.run(clean, patcher.sender_values(corrupt), torch.ones_like(patcher.graph.allowed))
    with pytest.raises(MechscopeError, match="post-LN"):
        Graph.from_model(tiny_model("bert"))
