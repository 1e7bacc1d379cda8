"""Site views against index arithmetic written out by hand (how a fused or per-head
projection lays out its heads), the site table's order, globs and errors, and the sites
each family has."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.sites import FusedQKVView, HeadsView, PatternView, View

from ..models.tiny import tiny_model

N, D = 3, 4  # heads, d_head


def test_heads_view_by_hand():
    raw = torch.randn(2, 5, N * D)
    view = HeadsView(N, D)
    seen = view.read(raw)
    for h in range(N):
        for j in range(D):
            assert torch.equal(seen[..., h, j], raw[..., h * D + j])
    assert torch.equal(view.write(raw, seen * 2), raw * 2) and view.head_dim == 2 and view.editable


@pytest.mark.parametrize("layout, n_kv", [("gpt2_fused", N), ("neox_fused", N), ("concat", N), ("concat", 1)])
def test_fused_qkv_view_by_hand(layout, n_kv):
    widths = [N * D, n_kv * D, n_kv * D]
    raw = torch.randn(2, 5, sum(widths))

    def column(part, h, j):  # NeoX: [head, 3, d_head]; GPT-2 and concat: [q heads | k heads | v heads]
        return h * 3 * D + part * D + j if layout == "neox_fused" else sum(widths[:part]) + h * D + j

    for part in range(3):
        view = FusedQKVView(part, layout, N, D, n_kv)
        heads = N if part == 0 else n_kv
        seen = view.read(raw)
        assert seen.shape == (2, 5, heads, D)
        for h in range(heads):
            for j in range(D):
                assert torch.equal(seen[..., h, j], raw[..., column(part, h, j)])
        new = torch.randn(2, 5, heads, D)
        written = view.write(raw, new)
        expected = raw.clone()
        for h in range(heads):
            for j in range(D):
                expected[..., column(part, h, j)] = new[..., h, j]
        assert torch.equal(written, expected)  # only this part's columns changed


def test_plain_and_pattern_views():
    raw = torch.randn(2, 3)
    assert View().read(raw) is raw and View().write(raw, raw * 0) is not raw
    assert torch.equal(View().write(raw, raw + 1), raw + 1) and View.index == 0 and View.head_dim is None
    assert PatternView.index == 1 and not PatternView.editable and PatternView.head_dim == 1


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama"])
def test_qkv_sites_read_the_projections(kind):
    """hook_q/k/v against the projection weights applied by hand to the block's normed input."""
    model = tiny_model(kind)
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(1))
    sites = ["blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v", "blocks.1.hook_resid_pre"]
    with torch.no_grad():
        run = model.run(ids, record=sites)
        normed = model.module(model.adapter.block(1, model.adapter.attn_in_norm))(run.cache["blocks.1.hook_resid_pre"])
        for name, W, b in (
            ("q", model.W_Q(1), model.b_Q(1)),
            ("k", model.W_K(1), model.b_K(1)),
            ("v", model.W_V(1), model.b_V(1)),
        ):
            by_hand = torch.einsum("bpm,hmd->bphd", normed, W) + b
            got = run.cache[f"blocks.1.attn.hook_{name}"]
            if kind == "neox" and name != "v":  # rotary embeddings act after the projection
                continue
            assert torch.allclose(got, by_hand, atol=1e-5), name
        # editing one of the fused parts changes that part only
        q, k, v = (run.cache[f"blocks.1.attn.hook_{n}"] for n in "qkv")
        edited = model.run(ids, record=sites[:3], edits=[ms.edits.zero("blocks.1.attn.hook_k", heads=0)])
    assert torch.equal(edited.cache["blocks.1.attn.hook_q"], q) and torch.equal(edited.cache["blocks.1.attn.hook_v"], v)
    assert edited.cache["blocks.1.attn.hook_k"][:, :, 0].eq(0).all()
    assert torch.equal(edited.cache["blocks.1.attn.hook_k"][:, :, 1:], k[:, :, 1:])


def test_table_order_globs_and_errors():
    model = tiny_model("llama")
    table = model.table
    names = list(table.by_name)
    block = [
        "hook_resid_pre",
        "attn.hook_q",
        "attn.hook_k",
        "attn.hook_v",
        "attn.hook_pattern",
        "attn.hook_z",
        "hook_attn_out",
        "hook_resid_mid",
        "hook_mlp_in",
        "mlp.hook_post",
        "hook_mlp_out",
        "hook_resid_post",
    ]
    expected = ["hook_embed"] + [f"blocks.{i}.{s}" for i in range(2) for s in block]
    expected += ["ln_final.hook_normalized", "logits"]
    # these sites in forward order (a family may add more between them)
    assert [n for n in names if n in expected] == expected and [s.name for s in table] == names
    assert len(table) == len(names) and len(names) == len(set(names))
    assert table.resolve("blocks.*.hook_resid_post") == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert table.resolve(["blocks.1.hook_attn_out", "blocks.0.attn.hook_?"]) == [
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_k",
        "blocks.0.attn.hook_v",
        "blocks.0.attn.hook_z",
        "blocks.1.hook_attn_out",
    ]
    assert table.resolve("hook_embed") == ["hook_embed"]
    site = table["blocks.1.attn.hook_z"]
    assert site.layer == 1 and site.dims == ("batch", "pos", "head", "d_head") and site.sizes == (None, None, 4, 8)
    assert site.pos_dim == 1 and table["blocks.0.attn.hook_pattern"].pos_dim == 2
    assert table["blocks.0.attn.hook_k"].sizes == (None, None, 2, 8)  # key/value heads
    assert site.describe() == "blocks.1.attn.hook_z [batch, pos, head=4, d_head=8]"
    assert table["blocks.0.mlp.hook_post"].sizes == (None, None, 64)
    with pytest.raises(
        ms.MechscopeError, match=r"^unknown site 'blocks.2.hook_resid_post': this model has 2 layers \(0-1\)$"
    ):
        table.resolve("blocks.2.hook_resid_post")
    with pytest.raises(ms.MechscopeError, match=r"this model has 2 layers \(0-1\)"):
        table["blocks.-1.hook_resid_post"]
    with pytest.raises(ms.MechscopeError, match=r"did you mean 'blocks.1.hook_mlp_out'\? \(`mechscope info MODEL`"):
        table["blocks.1.hook_mlp_ot"]
    with pytest.raises(ms.MechscopeError, match=r"^unknown site 'zzz' \(`mechscope info MODEL` lists every site\)$"):
        table.resolve("zzz")
    with pytest.raises(ms.MechscopeError, match=r"unknown site 'blocks\.7\.nothing_\*': this model has 2 layers"):
        table.resolve("blocks.7.nothing_*")
    with pytest.raises(ms.MechscopeError, match="site names must be strings, got 3"):
        table.resolve(["hook_embed", 3])
    parallel = tiny_model("neox").table
    with pytest.raises(
        ms.MechscopeError,
        match=r"^unknown site 'blocks.0.hook_resid_mid': GPT-NeoX \(Pythia\) blocks here "
        r"run attention and MLP in parallel \(or have no MLP\), so there is no resid_mid \(`mechscope",
    ):
        parallel.resolve("blocks.0.hook_resid_mid")


@pytest.mark.parametrize(
    "kind, pos_embed, resid_mid, mlp",
    [
        ("gpt2", True, True, True),
        ("neox", False, False, True),
        ("neox_seq", False, True, True),
        ("toy_attn_only", False, False, False),
    ],
)
def test_each_family_has_its_sites(kind, pos_embed, resid_mid, mlp):
    model = tiny_model(kind)
    names = set(model.table.by_name)
    assert ("hook_pos_embed" in names) == pos_embed
    assert ("blocks.0.hook_resid_mid" in names) == resid_mid
    assert ("blocks.1.hook_mlp_out" in names) == mlp and ("blocks.1.mlp.hook_post" in names) == mlp
    if pos_embed:
        assert model.table["hook_pos_embed"].sizes == (1, None, 32)
        assert model.table["hook_pos_embed"].dims == ("batch", "pos", "d_model")
    for site in model.table:  # every block site knows its layer; the others have none
        assert site.layer == (int(site.name.split(".")[1]) if site.name.startswith("blocks.") else None), site.name
    run = model.run(torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(0)), record="*")
    for name in names - {"logits"}:
        site = model.table[name]
        value = run.cache[name]
        assert len(value.shape) == len(site.dims), name
        assert all(s is None or s == n for s, n in zip(site.sizes, value.shape)), name
