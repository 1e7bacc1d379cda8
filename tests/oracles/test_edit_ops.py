"""Every edit constructor with a position and head selection, against the value written
out by hand at the selected cells and the untouched activation everywhere else; the
checks that refuse bad values, positions and heads, read through Edit.apply directly."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope import edits
from mechscope.edits import Edit

from ..models.tiny import tiny_model

Z = "blocks.1.attn.hook_z"
IDS = torch.randint(0, 97, (3, 6), generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _selected(shape, positions, heads):
    """[batch, pos, head, 1] bool: the cells an edit at these positions (from each full
    row's start, or its end when negative) and heads touches."""
    mask = torch.zeros(shape[0], shape[1], shape[2], 1, dtype=torch.bool)
    for p in positions:
        for h in heads:
            mask[:, p % shape[1], h] = True
    return mask


def test_every_operation_at_selected_positions_and_heads(llama):
    # the edited site is recorded at itself: the value after the edit, before anything later
    base = llama.run(IDS, record=Z).cache[Z]
    gen = torch.Generator().manual_seed(9)
    vector, other = torch.randn(8, generator=gen), torch.randn(2, 6, 4, 8, generator=gen)
    cases = {
        "replace": (edits.replace(Z, vector, positions=[1], heads=[2]), lambda x: vector.expand_as(x)),
        "replace_fn": (edits.replace(Z, lambda x: 3 * x + 1, positions=[1], heads=[2]), lambda x: 3 * x + 1),
        "add": (edits.add(Z, vector, positions=[1], heads=[2]), lambda x: x + vector),
        "scale": (edits.scale(Z, -2.5, positions=[1], heads=[2]), lambda x: -2.5 * x),
        "zero": (edits.zero(Z, positions=[1], heads=[2]), torch.zeros_like),
        "mean": (edits.mean(Z, other, positions=[1], heads=[2]), lambda x: other.mean(0).expand_as(x)),
        "mean_flat": (
            edits.mean(Z, other, over_positions=True, positions=[1], heads=[2]),
            lambda x: other.mean((0, 1)).expand_as(x),
        ),
    }
    selected = _selected(base.shape, [1], [2])
    for name, (edit, by_hand) in cases.items():
        out = llama.run(IDS, record=Z, edits=[edit]).cache[Z]
        expected = torch.where(selected, by_hand(base), base)
        assert out.dtype == base.dtype and torch.allclose(out, expected, atol=1e-6), name
        assert not torch.equal(out, base), name
    # resample: each row's selected cells come from one row of the reference, drawn with the seed
    out = llama.run(IDS, record=Z, edits=[edits.resample(Z, other, seed=5, positions=[-1], heads=[0, 3])]).cache[Z]
    rows = torch.randint(len(other), (3,), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, torch.where(_selected(base.shape, [-1], [0, 3]), other[rows], base), atol=1e-6)
    default = llama.run(IDS, record=Z, edits=[edits.resample(Z, other, positions=[-1], heads=[0, 3])]).cache[Z]
    rows0 = torch.randint(len(other), (3,), generator=torch.Generator().manual_seed(0))  # the default seed is 0
    assert torch.allclose(default, torch.where(_selected(base.shape, [-1], [0, 3]), other[rows0], base), atol=1e-6)


def test_values_take_the_sites_dtype(llama):
    site = "blocks.0.hook_resid_post"
    base = llama.run(IDS, record=site).cache[site]
    vector = torch.randn(32, dtype=torch.float64)
    out = llama.run(IDS, record=site, edits=[edits.add(site, vector)]).cache[site]
    assert out.dtype == torch.float32 and torch.allclose(out, base + vector.float(), atol=1e-6)
    reference = torch.randn(2, 6, 32, dtype=torch.float64)
    assert edits.mean(site, reference).value.dtype == torch.float64
    assert edits.mean(site, reference).value.shape == (6, 32)
    assert edits.resample(site, reference[:1]).value.shape == (1, 6, 32)  # one reference row is enough


def test_apply_selects_query_positions_of_a_pattern_shaped_value():
    x = torch.rand(2, 4, 5, 5)  # [batch, head, q_pos, k_pos]
    out = edits.zero("s", positions=[-1], heads=[1]).apply(
        x, site="s", dims=("batch", "head", "q_pos", "k_pos"), lengths=torch.tensor([5, 3]), strict=True
    )
    expected = x.clone()
    expected[0, 1, 4] = 0
    expected[1, 1, 2] = 0
    assert torch.equal(out, expected)


def test_bad_edits_are_refused_with_their_site_named():
    x = torch.zeros(2, 3, 4, 8)
    dims = ("batch", "pos", "head", "d_head")

    def apply(edit, value=x, dims=dims, strict=True):
        return edit.apply(value, site="the.site", dims=dims, lengths=None, strict=strict)

    with pytest.raises(
        ms.MechscopeError, match=r"edit of 'the.site' has shape \(5,\) but the site has shape \(2, 3, 4, 8\): give"
    ):
        apply(edits.add("s", torch.zeros(5)))
    # a function must keep the exact shape, even one that would broadcast
    with pytest.raises(ms.MechscopeError, match=r"edit of 'the.site' has shape \(1, 3, 4, 8\) but the site"):
        apply(edits.replace("s", lambda v: v[:1]))
    assert torch.equal(apply(edits.replace("s", torch.ones(8))), torch.ones(2, 3, 4, 8))  # broadcasts
    assert torch.equal(apply(edits.replace("s", torch.ones(3, 1, 8))), torch.ones(2, 3, 4, 8))
    with pytest.raises(ms.MechscopeError, match="unknown edit operation 'bogus'"):
        apply(Edit("s", "bogus", 1.0))
    with pytest.raises(ms.MechscopeError, match="site 'the.site' has no position dimension to select from"):
        apply(edits.zero("s", positions=0), value=torch.zeros(2, 8), dims=("batch", "d"))
    with pytest.raises(ms.MechscopeError, match="site 'the.site' has no head dimension"):
        apply(edits.zero("s", heads=0), value=torch.zeros(2, 3, 8), dims=("batch", "pos", "d_model"))
    with pytest.raises(ms.MechscopeError, match=r"head \[4\] out of range for 'the.site', which has 4 heads \(0-3\)"):
        apply(edits.zero("s", heads=4))
    with pytest.raises(ms.MechscopeError, match=r"head \[-5\] out of range"):
        apply(edits.zero("s", heads=-5))
    out = apply(edits.scale("s", 2.0, heads=-4), value=torch.ones(2, 3, 4, 8))  # -n is the first head
    assert out[:, :, 0].eq(2).all() and out[:, :, 1:].eq(1).all()
    with pytest.raises(ms.MechscopeError, match=r"position 3 is outside the sequence at 'the.site'"):
        apply(edits.zero("s", positions=3))
    assert torch.equal(apply(edits.add("s", 1.0, positions=3), strict=False), x)  # not strict: left alone
    with pytest.raises(
        ms.MechscopeError,
        match=r"^resample needs a non-empty reference batch \[n, pos, \.\.\.\] of "
        r"recorded activations$",
    ):
        edits.resample("s", torch.zeros(4))
    assert edits.resample("s", torch.zeros(3, 4)).value.shape == (3, 4)  # [n, pos] is the smallest reference
    with pytest.raises(ms.MechscopeError, match="resample needs a non-empty reference batch"):
        edits.resample("s", torch.zeros(0, 3))
