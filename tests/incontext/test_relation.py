"""Linear relational embeddings: a planted affine toy is recovered exactly, and on a
nonlinear toy the batched Jacobians equal torch.autograd.functional.jacobian."""

from __future__ import annotations

import pytest
import torch

from mechscope.errors import MechscopeError
from mechscope.incontext import encode_samples, jacobians, relation
from mechscope.model import Model
from mechscope.zoo.icl import make_tokenizer, vocabulary
from mechscope.zoo.transformer import ToyConfig, ToyTransformer

N_ITEMS = 24


def toy(planted: bool, seed: int = 0) -> Model:
    """1 block; planted: attention-only, no norm, zero keys (uniform attention), so the last
    token's residual is exactly affine in every earlier token's residual."""
    config = ToyConfig(
        vocab_size=len(vocabulary(N_ITEMS)),
        n_ctx=16,
        d_model=16,
        n_layers=1 if planted else 2,
        n_heads=2,
        d_head=8,
        d_mlp=0 if planted else 32,
        act="gelu",
        norm="none" if planted else "layernorm",
        init_std=0.5,
    )
    torch.manual_seed(seed)
    hf = ToyTransformer(config).eval()
    if planted:
        with torch.no_grad():
            hf.blocks[0].attn.k.weight.zero_()
            hf.blocks[0].attn.k.bias.zero_()
    return Model(hf, make_tokenizer(N_ITEMS))


def samples(n: int = N_ITEMS) -> tuple[list[str], list[str]]:
    """`<s> nI ;` with subject nI (3 tokens: uniform attention averages 3 positions)."""
    return [f"n{i} ;" for i in range(n)], [f"n{i}" for i in range(n)]


def planted_map(model: Model) -> tuple[torch.Tensor, int]:
    attn = model.hf.blocks[0].attn
    return (attn.o.weight @ attn.v.weight / 3).detach(), 3


def test_planted_affine_map_is_recovered_and_faithful():
    model = toy(planted=True)
    prompts, subjects = samples()
    result = relation(model, prompts, subjects, "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", betas=(1.0,))
    truth, _ = planted_map(model)
    assert torch.allclose(result.weight, truth, atol=1e-4)
    # the bias is the same for every sample (BOS and ';' do not change): o - A s on any of them
    data = encode_samples(model, prompts[:3], subjects[:3])
    _, s, o = jacobians(model, data, "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post")
    assert torch.allclose(result.bias, o[0] - truth @ s[0], atol=1e-4)
    assert result.faithfulness == 1.0
    assert result.faithfulness_by_beta.tolist() == [1.0]
    assert 0.0 <= result.baseline < 1.0


def test_causality_of_the_planted_map_at_full_rank():
    model = toy(planted=True)
    prompts, subjects = samples()
    result = relation(model, prompts, subjects, "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post")
    # the subject enters only through A = W_O W_V / 3 (rank <= 16): its full-rank inverse hits o' exactly
    full = result.causality_by_rank[-1].item()
    assert full == 1.0 and result.causality == 1.0
    assert result.ranks.tolist()[-1] == 16


def test_nonlinear_jacobians_equal_autograd_functional():
    model = toy(planted=False, seed=3)
    prompts = ["n3 -> n4 ; n5 ->", "n7 ; n1 n2 ->", "n9 ->"]
    subjects = ["n4", "n1", "n9"]
    data = encode_samples(model, prompts, subjects)
    J, s, o = jacobians(model, data, "blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
    assert J.shape == (3, 16, 16)
    for row in range(3):
        ids = data.ids[row : row + 1, : int(data.last[row]) + 1]
        pos = int(data.subject[row])

        expected = torch.autograd.functional.jacobian(lambda x: _resid_post(model, ids, pos, x), s[row])
        assert torch.allclose(J[row], expected, atol=1e-5), (row, (J[row] - expected).abs().max())
    assert not torch.allclose(J[0], J[1], atol=1e-3)  # nonlinear: the Jacobian depends on the sample


def _resid_post(model: Model, ids: torch.Tensor, pos: int, x: torch.Tensor) -> torch.Tensor:
    out = {}

    def pre(module, args):
        h = args[0].clone()
        h[0, pos] = x
        return (h, *args[1:])

    def post(module, args, output):
        out["o"] = output

    handles = [
        model.hf.blocks[1].register_forward_pre_hook(pre),
        model.hf.blocks[1].register_forward_hook(post),
    ]
    try:
        model.hf(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return out["o"][0, -1]


def test_bad_relation_inputs():
    model = toy(planted=True)
    with pytest.raises(MechscopeError, match="not in the prompt"):
        relation(model, ["n1 ;", "n2 ;"], ["n1", "n9"], "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post")
    with pytest.raises(MechscopeError, match="one subject per prompt"):
        relation(model, ["n1 ;", "n2 ;"], ["n1"], "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post")
    with pytest.raises(MechscopeError, match="held-out"):
        relation(model, ["n1 ;"], ["n1"], "blocks.0.hook_resid_pre", "blocks.0.hook_resid_post")
    with pytest.raises(MechscopeError, match="unknown site|layers"):
        relation(model, ["n1 ;", "n2 ;"], ["n1", "n2"], "blocks.5.hook_resid_pre", "blocks.0.hook_resid_post")
