"""hooks.py's helpers against results written out by hand: tiling per-prompt values over
copies, tiling masks, refusing edits that cannot apply; hooks gone after every run."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope import edits
from mechscope.hooks import _tile, per_row, resolve_edits

from ..models.tiny import tiny_model


def test_per_row_tiles_prompt_values_over_copies():
    lengths = torch.tensor([3, 5])
    assert per_row(None, 6) is None
    assert per_row(lengths, 2) is lengths  # one row per prompt: as is
    assert per_row(lengths, 1) is lengths  # fewer rows (a cut batch): as is
    assert per_row(lengths, 3) is lengths  # not a multiple: as is
    assert per_row(lengths, 6).tolist() == [3, 5, 3, 5, 3, 5]  # copies in order, prompts inside


def test_tile_repeats_batch_leading_tensors_only():
    mask = torch.arange(6).view(2, 3)
    tiled = _tile(mask, 2, 3)
    assert torch.equal(tiled, torch.cat([mask, mask, mask]))
    assert _tile(torch.arange(2), 2, 3).shape == (2,)  # 1-d (positions): broadcasts, left alone
    assert _tile(mask, 2, 1) is mask and _tile(mask[:1], 1, 3).shape == (1, 3)  # no copies / batch of one
    assert _tile(torch.zeros(3, 4), 2, 3).shape == (3, 4)  # leading axis is not the prompts
    nested = _tile({"a": (mask, [mask]), "b": 5}, 2, 2)
    assert nested["a"][0].shape == (4, 3) and isinstance(nested["a"], tuple)
    assert isinstance(nested["a"][1], list) and nested["a"][1][0].shape == (4, 3) and nested["b"] == 5


def test_resolve_edits_by_site_and_refusals():
    model = tiny_model("gpt2")
    add, zero = edits.add("blocks.*.hook_resid_post", torch.ones(32)), edits.zero("blocks.1.hook_resid_post")
    by_site = resolve_edits(model.table, [add, zero])
    assert by_site == {"blocks.0.hook_resid_post": [add], "blocks.1.hook_resid_post": [add, zero]}
    with pytest.raises(ms.MechscopeError, match="edits must be made with mechscope.edits .*got tuple"):
        resolve_edits(model.table, [("blocks.0.hook_resid_post", "zero")])
    with pytest.raises(ms.MechscopeError, match=r"^'blocks.0.attn.hook_pattern' can be recorded but not edited"):
        resolve_edits(model.table, [edits.zero("blocks.0.attn.hook_pattern")])
    with pytest.raises(ms.MechscopeError, match="'logits' can be recorded but not edited"):
        resolve_edits(model.table, [edits.zero("logits")])


@pytest.mark.parametrize("kind", ["gpt2", "llama", "toy"])
def test_edit_at_block_input_and_output_with_hooks_removed(kind):
    """An edit at a block's input (resid_pre) equals the same edit at the previous block's output."""
    model = tiny_model(kind)
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(2))
    vec = torch.randn(32, generator=torch.Generator().manual_seed(3))
    pre = model.run(
        ids,
        record=["blocks.1.hook_resid_pre", "blocks.0.hook_resid_post"],
        edits=[edits.add("blocks.1.hook_resid_pre", vec)],
    )
    post = model.run(ids, record=["blocks.1.hook_resid_pre"], edits=[edits.add("blocks.0.hook_resid_post", vec)])
    plain = model.run(ids, record=["blocks.0.hook_resid_post"])
    assert torch.allclose(pre.logits, post.logits, atol=1e-5)
    assert torch.allclose(
        pre.cache["blocks.1.hook_resid_pre"], plain.cache["blocks.0.hook_resid_post"] + vec, atol=1e-6
    )
    assert torch.equal(pre.cache["blocks.0.hook_resid_post"], plain.cache["blocks.0.hook_resid_post"])
    assert not torch.allclose(pre.logits, plain.logits, atol=1e-4)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules()) == 0


def test_edit_errors_from_a_run_name_the_site():
    model = tiny_model("gpt2")
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(2))
    with pytest.raises(
        ms.MechscopeError,
        match=r"^position 9 is outside the sequence at 'blocks.1.hook_resid_post' "
        r"\(lengths \[5\]\)$",
    ):
        model.run(ids, edits=[edits.zero("blocks.1.hook_resid_post", positions=9)])
