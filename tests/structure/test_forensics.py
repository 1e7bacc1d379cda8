"""The checked low-rank SVD against the full SVD (right guess, wrong guess, not low-rank),
edit forensics on planted updates of tiny models, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from mechscope import structure as st
from mechscope.errors import MechscopeError
from mechscope.model import Model

from ..commands.test_structure_cli import word_tokenizer
from ..models.tiny import tiny_model


def _low_rank(m: int, n: int, rank: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g) / rank**0.5


@pytest.mark.parametrize("rank", [1, 3, 30])  # 30 > the first guess (4 + 8): q must double
def test_lowrank_svd_matches_the_full_svd(rank):
    a = _low_rank(300, 500, rank)
    found = st.lowrank_svd(a, scale=1.0)
    full = torch.linalg.svdvals(a.double())
    assert found.solver == "randomized" and found.rank == rank
    assert torch.allclose(found.S[:rank].double(), full[:rank], rtol=1e-5)
    assert full[rank] <= found.tol  # nothing above the floor was missed
    recon = (found.U[:, :rank] * found.S[:rank]) @ found.V[:, :rank].T
    assert (recon - a).abs().max() <= 1e-4 * a.abs().max()


def test_lowrank_svd_falls_back_to_the_full_svd_when_the_guess_is_wrong():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, 240, generator=g)  # full rank: no guess is right
    found = st.lowrank_svd(a, scale=1.0, guess=2)
    assert found.solver == "full" and found.rank == 200
    assert torch.allclose(found.S, torch.linalg.svdvals(a), rtol=1e-5)
    # rank 60 > max_rank 25 (= 200 // 8): the randomised solver gives up and says so
    assert st.lowrank_svd(_low_rank(200, 240, 60), scale=1.0).solver == "full"


def _edited(model, name: str, update: torch.Tensor) -> Model:
    hf = copy.deepcopy(model.hf)
    with torch.no_grad():
        hf.get_submodule(name).weight += update
    return Model(hf, model.tokenizer, name="edited")


def test_planted_rank_one_update_of_a_tiny_model():
    model = tiny_model("llama")
    g = torch.Generator().manual_seed(2)
    v, k = torch.randn(32, generator=g), torch.randn(64, generator=g)
    edited = _edited(model, "model.layers.1.mlp.down_proj", 0.05 * torch.outer(v, k))  # [d_model, d_mlp]
    found = st.edit_forensics(model, edited)
    assert found.changed() == ["blocks.1.mlp.W_out"]
    row = found.row("blocks.1.mlp.W_out")
    assert row["rank"] == 1 and row["sigma_ratio"] < row["noise_floor"] / row["sigma_max"]
    u_key, v_val = found.tensors["blocks.1.mlp.W_out.U"][:, 0], found.tensors["blocks.1.mlp.W_out.V"][:, 0]
    assert abs(float(u_key @ k / k.norm())) == pytest.approx(1.0, abs=1e-5)  # key: input (d_mlp) side
    assert abs(float(v_val @ v / v.norm())) == pytest.approx(1.0, abs=1e-5)  # value: output (d_model) side
    assert torch.allclose(found.update("blocks.1.mlp.W_out").float(), 0.05 * torch.outer(k, v), atol=1e-6)
    assert not found.readings  # nothing to read without candidates or a corpus


def test_unchanged_models_and_bad_input():
    model = tiny_model("llama")
    same = st.edit_forensics(model, Model(copy.deepcopy(model.hf), model.tokenizer, name="copy"))
    assert same.changed() == [] and all(r["solver"] == "equal" for r in same.rows)
    with pytest.raises(MechscopeError, match="did not change"):
        same.update("blocks.0.mlp.W_out")
    with pytest.raises(MechscopeError) as err:
        st.edit_forensics(model, tiny_model("gpt2"))
    assert "same architecture" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MechscopeError, match="shapes differ"):  # same family, other sizes
        st.edit_forensics(model, tiny_model("mistral"))
    with pytest.raises(MechscopeError, match="unknown matrix kind"):
        st.edit_forensics(model, model, kinds=("W_X",))
    with pytest.raises(MechscopeError, match="not edit forensics"):
        st.EditForensics.load(st.weight_diff(model, model, kinds=("W_in",)).save(_tmp()))


def _tmp():
    import tempfile

    return tempfile.mkdtemp()


def test_key_responses_of_an_attention_output_update_against_recorded_z():
    """A rank-one update of W_O is read at attn.hook_z (heads and d_head joined): each
    candidate's score is |uᵀ z| of its z at the name's last token, averaged over templates,
    recomputed here from a plain recording."""
    model = tiny_model("llama")
    model = Model(model.hf, word_tokenizer(), name="tiny")
    g = torch.Generator().manual_seed(3)
    edited = _edited(
        model,
        "model.layers.0.self_attn.o_proj",
        torch.outer(torch.randn(32, generator=g), torch.randn(32, generator=g)),
    )
    templates = ["{}", "print ( {} )"]
    found = st.edit_forensics(model, edited, candidates=["x", "y", "a", "b"], templates=templates, top=5)
    reading = found.readings["blocks.0.attn.W_O"]
    u = found.tensors["blocks.0.attn.W_O.U"][:, 0].double()
    for key in reading["keys"]:
        texts = [t.format(key["name"]) for t in templates]
        run = model.run(texts, record="blocks.0.attn.hook_z")
        z = run.cache["blocks.0.attn.hook_z"].flatten(2).double()
        at = torch.stack([z[0, 0], z[1, 2]])  # 'x' alone, and at position 2 of 'print ( x )'
        assert key["score"] == pytest.approx(float((at.mean(0) @ u).abs()), rel=1e-9)
    assert [k["score"] for k in reading["keys"]] == sorted((k["score"] for k in reading["keys"]), reverse=True)
    assert len(reading["promoted"]) == 5 and len(reading["contexts"]) == 2
