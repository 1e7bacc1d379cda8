"""Weight spectra and weight diffs: statistics on known matrices, circuits through their
factors against the explicit product (grouped-query attention included), planted updates."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from mechscope import structure as st
from mechscope.errors import MechscopeError

from ..models.tiny import tiny_model


@pytest.mark.parametrize("d", [2, 7, 32])
def test_statistics_of_known_spectra(d):
    identity = torch.linalg.svdvals(torch.eye(d, dtype=torch.float64))
    assert st.spectral_entropy(identity) == pytest.approx(math.log(d), abs=1e-12)
    assert st.effective_rank(identity) == pytest.approx(d) and st.stable_rank(identity) == pytest.approx(d)
    assert st.top_k_share(identity, 1) == pytest.approx(1 / d)
    rank1 = torch.linalg.svdvals(torch.randn(d, 1, dtype=torch.float64) @ torch.randn(1, d + 3, dtype=torch.float64))
    assert st.spectral_entropy(rank1) == pytest.approx(0.0, abs=1e-12)
    assert st.effective_rank(rank1) == pytest.approx(1.0) and st.stable_rank(rank1) == pytest.approx(1.0)
    zero = torch.zeros(d, dtype=torch.float64)
    assert math.isnan(st.spectral_entropy(zero)) and st.effective_rank(zero) == 0 and st.stable_rank(zero) == 0


def test_factored_svd_is_the_svd_of_the_product():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(6, 30, generator=g, dtype=torch.float64)
    u, s, vh = st.factored_svd(a, b)
    assert torch.allclose(u @ torch.diag(s) @ vh, a @ b, atol=1e-10)
    assert torch.allclose(s, torch.linalg.svdvals(a @ b)[:6], atol=1e-10)
    assert torch.allclose(u.T @ u, torch.eye(6, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("kind", ["llama", "mistral", "gpt2", "neox"])
def test_circuits_via_factors_equal_the_explicit_product(kind):
    model = tiny_model(kind)
    spectra = st.weight_spectra(model, kinds=("OV", "QK"), dtype=torch.float64)
    d = model.dims
    group = d.n_heads // d.n_kv_heads
    for layer in range(d.n_layers):
        for h in range(d.n_heads):
            ov = model.W_V(layer)[h // group].double() @ model.W_O(layer)[h].double()
            qk = model.W_Q(layer)[h].double() @ model.W_K(layer)[h // group].double().T
            for name, product in (("OV", ov), ("QK", qk)):
                explicit = torch.linalg.svdvals(product)
                found = spectra.values[f"blocks.{layer}.attn.{name}.{h}"]
                assert found.shape == (d.d_head,) and torch.allclose(found, explicit[: d.d_head], atol=1e-10)
                assert explicit[d.d_head :].abs().max() < 1e-10  # rank <= d_head


def test_weight_spectra_cover_every_matrix(tmp_path):
    model = tiny_model("mistral")  # 4 heads share 1 kv head; gated MLP
    spectra = st.weight_spectra(model)
    kinds = {r["kind"] for r in spectra.rows}
    assert kinds == set(st.KINDS)
    per_head_k = [r for r in spectra.rows if r["kind"] == "W_K" and r["layer"] == 0 and r["head"] is not None]
    assert len(per_head_k) == model.dims.n_kv_heads == 1
    assert spectra.by_layer("OV").shape == (2, 4) and spectra.by_layer("W_in").shape == (2, 1)
    whole_q = next(r for r in spectra.rows if r["name"] == "blocks.1.attn.W_Q")
    explicit = torch.linalg.svdvals(model.hf.model.layers[1].self_attn.q_proj.weight.detach())
    assert whole_q["shape"] == [32, 32] and whole_q["sigma_max"] == pytest.approx(float(explicit[0]), rel=1e-5)
    assert spectra.scree("W_E").elbow >= 1 and spectra.plot().axes and spectra.plot("stable_rank").axes
    spectra.save(tmp_path / "spectra")
    again = st.WeightSpectra.load(tmp_path / "spectra")
    assert again.rows == spectra.rows and torch.equal(again.values["W_U"], spectra.values["W_U"])
    attn_only = st.weight_spectra(tiny_model("toy_attn_only"))
    assert not {"W_in", "W_out", "W_gate"} & {r["kind"] for r in attn_only.rows}


def test_diff_with_itself_is_zero():
    model = tiny_model("llama")
    diff = st.weight_diff(model, model)
    assert all(r["norm"] == 0.0 and r["rank"] == 0 and r["angles_left"] == [] for r in diff.rows)
    assert diff.directions("blocks.0.mlp.W_in")[0].numel() == 0


def planted(model, rank: int, seed: int):
    tuned = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w_in = tuned.W_in(1)  # a view of the live parameter, [d_model, d_mlp]
        u, v = (
            torch.linalg.qr(torch.randn(w_in.shape[0], rank, generator=g))[0],
            torch.linalg.qr(torch.randn(w_in.shape[1], rank, generator=g))[0],
        )
        w_in.add_(u @ torch.diag(torch.linspace(0.5, 0.4, rank)) @ v.T)
        tuned.W_V(0)[0].add_(0.3 * torch.randn(32, 1, generator=g) @ torch.randn(1, 8, generator=g))
    return tuned, u


@pytest.mark.parametrize("rank", [1, 3])
def test_planted_update_is_found_with_its_rank_and_directions(rank, tmp_path):
    model = tiny_model("mistral")
    tuned, u = planted(model, rank, seed=rank)
    diff = st.weight_diff(model, tuned, k=4)
    changed = {r["name"] for r in diff.rows if r["rank"] > 0}
    # W_V's only kv head feeds every head's OV circuit (grouped-query attention)
    assert changed == {"blocks.1.mlp.W_in", "blocks.0.attn.W_V", "blocks.0.attn.W_V.0"} | {
        f"blocks.0.attn.OV.{h}" for h in range(4)
    }
    row = diff.row("blocks.1.mlp.W_in")
    assert row["rank"] == rank and row["elbow"] == rank and row["relative_norm"] > 0
    assert all(diff.row(f"blocks.0.attn.OV.{h}")["rank"] == 1 for h in range(4))
    sigma, left, right = diff.directions("blocks.1.mlp.W_in")
    assert left.shape == (32, rank) and right.shape == (64, rank)
    assert st.principal_angles(left, u) == pytest.approx([0.0] * rank, abs=1e-2)  # the planted directions
    assert len(row["angles_left"]) == rank and all(0 <= a <= 90 for a in row["angles_left"] + row["angles_right"])
    assert diff.plot("rank").axes
    diff.save(tmp_path / "diff")
    again = st.WeightDiff.load(tmp_path / "diff")
    assert again.row("blocks.1.mlp.W_in") == row and torch.equal(again.directions("blocks.1.mlp.W_in")[1], left)


def test_principal_angles_inside_and_outside_the_base_directions():
    q = torch.linalg.qr(torch.randn(10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    assert st.principal_angles(q[:, :2], q[:, :3]) == pytest.approx([0.0, 0.0], abs=1e-5)
    assert st.principal_angles(q[:, 3:5], q[:, :3]) == pytest.approx([90.0, 90.0], abs=1e-5)


def test_bad_input():
    llama = tiny_model("llama")
    with pytest.raises(MechscopeError, match=r"shapes differ .*n_kv_heads=2 vs 1"):
        st.weight_diff(llama, tiny_model("mistral"))
    with pytest.raises(MechscopeError, match="shapes differ .*d_mlp=64 vs 128"):
        st.weight_diff(llama, tiny_model("gpt2"))
    with pytest.raises(MechscopeError, match="unknown weight kind"):
        st.weight_spectra(llama, kinds=("W_X",))
    with pytest.raises(MechscopeError, match="no matrix named"):
        st.weight_spectra(llama, kinds=("OV",)).scree("W_E")
    with pytest.raises(MechscopeError, match="not a transformer"):
        from mechscope.module_model import ModuleModel

        st.weight_spectra(ModuleModel(torch.nn.Linear(3, 3)))
    with pytest.raises(MechscopeError, match="unknown statistic"):
        st.weight_spectra(llama, kinds=("OV",)).plot("rank")
    assert np.isnan(st.weight_spectra(llama, kinds=("OV",)).by_layer("W_in")).all()
