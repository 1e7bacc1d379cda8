"""hook_resid_mid is the residual stream between attention and MLP; where it is read at the
MLP norm's input, the block has already kept its own copy for the skip connection, so an edit
there would reach the MLP but not the stream. Such tables offer it read-only and name
hook_mlp_in (TransformerLens's name for what the MLP reads) for the edit."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope import edits
from tests.models.tiny import tiny_model

IDS = torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["gpt2", "llama", "neox_seq", "gemma2"])
def test_resid_mid_is_read_only_and_mlp_in_edits_only_the_mlp(name):
    model = tiny_model(name)
    with pytest.raises(ms.MechscopeError, match="hook_mlp_in"):
        model.run(IDS, edits=[edits.add("blocks.0.hook_resid_mid", torch.ones(model.dims.d_model))])
    sites = ["blocks.0.hook_resid_mid", "blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]
    clean = model.run(IDS, record=sites).cache
    assert torch.equal(clean["blocks.0.hook_mlp_in"], clean["blocks.0.hook_resid_mid"])
    u = torch.randn(model.dims.d_model, generator=torch.Generator().manual_seed(1))
    pushed = model.run(IDS, record=sites, edits=[edits.add("blocks.0.hook_mlp_in", u)]).cache
    assert not torch.allclose(pushed["blocks.0.hook_mlp_out"], clean["blocks.0.hook_mlp_out"])  # the MLP read it
    assert torch.equal(pushed["blocks.0.hook_mlp_in"], clean["blocks.0.hook_mlp_in"] + u)
    assert torch.equal(pushed["blocks.0.hook_resid_mid"], clean["blocks.0.hook_resid_mid"])  # the stream: unedited
    # ... and the stream went on without it: resid_post = (unedited) resid_mid + the MLP's new output
    torch.testing.assert_close(
        pushed["blocks.0.hook_resid_post"],
        clean["blocks.0.hook_resid_mid"] + pushed["blocks.0.hook_mlp_out"],
        rtol=1e-5,
        atol=1e-5,
    )


def test_post_ln_resid_mid_stays_editable_and_has_no_mlp_in():
    model = tiny_model("bert")
    assert "blocks.0.hook_mlp_in" not in model.table.by_name
    u = torch.ones(model.dims.d_model)
    base = model.run(IDS, record="blocks.0.hook_resid_mid").cache["blocks.0.hook_resid_mid"]
    got = model.run(IDS, record="blocks.0.hook_resid_mid", edits=[edits.add("blocks.0.hook_resid_mid", u)]).cache[
        "blocks.0.hook_resid_mid"
    ]
    torch.testing.assert_close(got, base + u)
