"""Oracle tests of the core on every family, in float32 and float64: Hugging Face's own
outputs are the truth."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope import edits

from .tiny import ENCODER_NAMES, FAMILY_NAMES, tiny_model

DTYPES = {"f32": torch.float32, "f64": torch.float64}


@pytest.fixture(scope="module", params=[(k, d) for k in FAMILY_NAMES for d in DTYPES], ids=lambda p: f"{p[0]}-{p[1]}")
def model(request) -> ms.Model:
    kind, dtype = request.param
    return tiny_model(kind, dtype=DTYPES[dtype])


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(1))


def _eager(model):
    model.hf.config._attn_implementation = "eager"


def test_recording_changes_nothing(model, ids):
    plain = model.hf(ids).logits
    every_site = [s.name for s in model.sites if "pattern" not in s.name]
    run = model.run(ids, record=every_site)
    assert torch.equal(run.logits, plain)
    assert len(run.cache) == len(every_site)


def test_recording_patterns_changes_nothing(model, ids):
    before = model.hf.config._attn_implementation
    run = model.run(ids, record="blocks.*.attn.hook_pattern")
    assert model.hf.config._attn_implementation == before  # switched back
    _eager(model)
    try:
        eager = model.hf(ids, output_attentions=True)
    finally:
        model.hf.config._attn_implementation = before
    assert torch.allclose(run.logits, eager.logits, atol=1e-6)
    for layer, attention in enumerate(eager.attentions):
        pattern = run.cache[f"blocks.{layer}.attn.hook_pattern"]
        assert torch.allclose(pattern, attention, atol=1e-6)
        assert torch.allclose(pattern.sum(-1), torch.ones((), dtype=pattern.dtype), atol=1e-5)


def test_resid_post_matches_hidden_states(model, ids):
    hidden = model.hf(ids, output_hidden_states=True).hidden_states
    run = model.run(ids, record=["blocks.*.hook_resid_post", "blocks.0.hook_resid_pre"])
    assert torch.equal(run.cache["blocks.0.hook_resid_pre"], hidden[0])
    L = model.dims.n_layers
    for layer in range(L - 1):  # the very tensor the block returned: exactly equal
        assert torch.equal(run.cache[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1])
    # Convention: the last hidden_states entry carries the final norm where the family has one.
    last = run.cache[f"blocks.{L - 1}.hook_resid_post"]
    assert torch.allclose(model.final_norm(last), hidden[L], atol=1e-6)


def test_residual_stream_adds_up(model, ids):
    """resid_post = resid_pre + attn_out + mlp_out for pre-norm families (mid in between)."""
    if model.adapter.post_ln:
        pytest.skip("post-LN blocks: the residual passes through a LayerNorm after each sublayer")
    run = model.run(ids, record="blocks.*")
    for layer in range(model.dims.n_layers):
        c = {k.split(".", 2)[2]: v for k, v in run.cache.items() if k.startswith(f"blocks.{layer}.")}
        total = c["hook_resid_pre"] + c["hook_attn_out"] + c.get("hook_mlp_out", 0)
        assert torch.allclose(total, c["hook_resid_post"], atol=1e-5)
        if "hook_resid_mid" in c:
            assert torch.allclose(c["hook_resid_pre"] + c["hook_attn_out"], c["hook_resid_mid"], atol=1e-5)


def test_head_contributions_sum_to_attn_out(model, ids):
    run = model.run(ids, record=["blocks.*.attn.hook_z", "blocks.*.hook_attn_out"])
    for layer in range(model.dims.n_layers):
        per_head, bias = model.head_results(run.cache[f"blocks.{layer}.attn.hook_z"], layer)
        assert per_head.shape == (*ids.shape, model.dims.n_heads, model.dims.d_model)
        assert torch.allclose(per_head.sum(-2) + bias, run.cache[f"blocks.{layer}.hook_attn_out"], atol=1e-5)


def test_qkv_views_match_weights(model, ids):
    """hook_q/k/v equal resid-after-norm times W_Q/W_K/W_V plus bias (checks fused layouts)."""
    run = model.run(ids, record=["blocks.0.attn.hook_*", "blocks.0.hook_resid_pre"])
    x = run.cache["blocks.0.hook_resid_pre"]
    if model.adapter.attn_in_norm:
        x = model.block_module(0, model.adapter.attn_in_norm)(x)
    for name, w, b in (
        ("q", model.W_Q(0), model.b_Q(0)),
        ("k", model.W_K(0), model.b_K(0)),
        ("v", model.W_V(0), model.b_V(0)),
    ):
        expected = torch.einsum("bpm,hmd->bphd", x, w) + b
        assert torch.allclose(run.cache[f"blocks.0.attn.hook_{name}"], expected, atol=1e-5), name


def test_to_logits_reproduces_logits(model, ids):
    L = model.dims.n_layers
    run = model.run(ids, record=f"blocks.{L - 1}.hook_resid_post")
    assert torch.allclose(model.to_logits(run.cache[f"blocks.{L - 1}.hook_resid_post"]), run.logits, atol=1e-5)


def test_replace_with_own_value_changes_nothing(model, ids):
    run = model.run(ids, record="blocks.*")
    patched = [edits.replace(name, value) for name, value in run.cache.items() if model.table[name].view.editable]
    again = model.run(ids, edits=patched)
    assert torch.allclose(again.logits, run.logits, atol=1e-6)


def test_zero_one_head_changes_only_what_depends_on_it(model, ids):
    run = model.run(ids, record="blocks.*")
    pos, head = 4, 1
    ablated = model.run(ids, record="blocks.*", edits=[edits.zero("blocks.1.attn.hook_z", heads=head, positions=pos)])
    for name, value in run.cache.items():
        if name.startswith("blocks.0.") or "hook_resid_pre" in name or name.startswith("blocks.1.attn.hook_"):
            if name == "blocks.1.attn.hook_z":
                z, z_ab = value, ablated.cache[name]
                assert torch.equal(z_ab[:, pos, head], torch.zeros_like(z_ab[:, pos, head]))
                z_ab = z_ab.clone()
                z_ab[:, pos, head] = z[:, pos, head]
                assert torch.equal(z, z_ab)
            else:
                assert torch.equal(value, ablated.cache[name]), name
    after = ablated.cache["blocks.1.hook_resid_post"]
    before = run.cache["blocks.1.hook_resid_post"]
    if model.name.removeprefix("tiny-") not in ENCODER_NAMES:  # causal: earlier positions cannot see the change
        if model.adapter.moe_router:  # exact up to rounding: the experts batch whichever tokens chose them
            assert torch.allclose(after[:, :pos], before[:, :pos], rtol=0, atol=1e-6)
        else:
            assert torch.equal(after[:, :pos], before[:, :pos])
    assert not torch.allclose(after[:, pos], before[:, pos])


def test_gradient_through_edit_matches_finite_difference(model, ids):
    if model.hf.dtype == torch.float64:
        pytest.skip("the test builds its own float64 model; once per family is enough")
    hf64 = tiny_model(model.name.removeprefix("tiny-"), dtype=torch.float64)
    direction = torch.zeros(model.dims.d_model, dtype=torch.float64, requires_grad=True)

    def objective(vec):
        run = hf64.run(ids[:1], edits=[edits.add("blocks.0.hook_resid_post", vec, positions=-2)], grad=True)
        return run.logits[0, -1].log_softmax(-1)[5]

    objective(direction).backward()
    # Llama-style RMSNorms compute in float32 even in a float64 model, so the step is
    # large enough to rise above float32 noise; central differences at two steps, combined
    # (Richardson), cancel the step's squared error where the tiny model curves sharply
    # (per-head q/k norms).
    eps = 1e-3
    basis = torch.eye(model.dims.d_model, dtype=torch.float64)

    def central(h: float, e: torch.Tensor) -> torch.Tensor:
        return (objective(h * e) - objective(-h * e)) / (2 * h)

    numeric = torch.stack([(4 * central(eps / 2, e) - central(eps, e)) / 3 for e in basis[:4]]).detach()
    assert direction.grad.abs().max() > 0
    assert torch.allclose(direction.grad[:4], numeric, atol=3e-5, rtol=1e-3)


def test_recorded_shapes_match_declared_dims(model, ids):
    run = model.run(ids, record="*")
    sizes = {"batch": ids.shape[0], "pos": ids.shape[1], "q_pos": ids.shape[1], "k_pos": ids.shape[1]}
    for site in model.sites:
        expected = tuple(sizes[d] if s is None else s for d, s in zip(site.dims, site.sizes))
        assert tuple(run.cache[site.name].shape) == expected, site.name


def test_mlp_out_weights(model, ids):
    """mlp.hook_post @ W_out + b_out gives what the MLP writes (then any post-norm or residual scale)."""
    if not model.dims.d_mlp:
        pytest.skip("attention-only model: no MLP")
    if model.adapter.mlp_down is None:
        pytest.skip("mixture of experts: no single W_out (tests/models/test_moe.py)")
    run = model.run(ids, record=["blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out"])
    b_out = model.b_out(0)
    out = run.cache["blocks.0.mlp.hook_post"] @ model.W_out(0) + (0 if b_out is None else b_out)
    if model.adapter.mlp_post_norm:
        out = model.block_module(0, model.adapter.mlp_post_norm)(out)
    out = out * model.adapter.residual_scale
    assert torch.allclose(out, run.cache["blocks.0.hook_mlp_out"], atol=1e-5)
    assert model.W_in(0).shape == (model.dims.d_model, model.dims.d_mlp)
    assert model.W_E.shape == (97, model.dims.d_model) and model.W_U.shape == (model.dims.d_model, 97)
