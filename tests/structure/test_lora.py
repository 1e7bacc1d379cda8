"""LoRA forensics against peft itself: a rank-r adapter on tiny random models built from
configs; the merged update (peft's merge_and_unload) has exactly r singular values above
the noise floor and equals scaling · B A read from the saved folder; intruder dimensions
on planted updates."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mechscope import structure as st
from mechscope.errors import MechscopeError
from mechscope.model import Model
from mechscope.structure.lora import intruders, read_adapter

from ..models.tiny import tiny_model

peft = pytest.importorskip("peft")
R = 3
TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]
NAMES = {"q_proj": "attn.W_Q", "v_proj": "attn.W_V", "up_proj": "mlp.W_in", "down_proj": "mlp.W_out"}


def _adapter(model, folder, seed: int = 0, **config):
    """(peft model merged into a copy of `model`, its in-memory lora modules) after saving to folder."""
    torch.manual_seed(seed)
    wrapped = peft.get_peft_model(
        copy.deepcopy(model.hf), peft.LoraConfig(init_lora_weights=False, **config)
    )  # random A and B (peft's default B = 0 would be no update)
    wrapped.save_pretrained(folder)
    layers = {n: m for n, m in wrapped.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    factors = {
        n.removeprefix("base_model.model."): (
            m.lora_A["default"].weight,
            m.lora_B["default"].weight,
            m.scaling["default"],
        )
        for n, m in layers.items()
    }
    factors = {n: tuple(x.detach().clone() if torch.is_tensor(x) else x for x in f) for n, f in factors.items()}
    merged = wrapped.merge_and_unload()
    return Model(merged, model.tokenizer, name="merged"), factors


@pytest.fixture(scope="module")
def llama_lora(tmp_path_factory):
    model = tiny_model("llama")
    folder = tmp_path_factory.mktemp("lora")
    merged, factors = _adapter(model, folder, r=R, lora_alpha=6, target_modules=TARGETS)
    return model, merged, factors, folder


def test_merged_update_has_rank_r_and_equals_scaling_b_a(llama_lora):
    model, merged, factors, folder = llama_lora
    read = read_adapter(folder)
    assert sorted(read.modules) == sorted(factors) and len(factors) == 2 * len(TARGETS)
    for name, (a, b, scaling) in factors.items():
        base_w = model.hf.get_submodule(name).weight.detach().double()
        delta = merged.hf.get_submodule(name).weight.detach().double() - base_w
        s = torch.linalg.svdvals(delta)
        tol = 1e-5 * (float(torch.linalg.matrix_norm(base_w, 2)) + float(s[0]))
        assert int((s > tol).sum()) == R and s[R - 1] > 100 * tol  # exactly r, not at the edge
        assert scaling == pytest.approx(6 / R)
        assert (delta - scaling * b.double() @ a.double()).abs().max() <= 1e-6
        module = read.modules[name]
        assert torch.equal(module.A, a) and torch.equal(module.B, b) and module.scaling == scaling
        assert (module.delta() - delta).abs().max() <= 1e-6  # read from the folder: the same update


def test_edit_forensics_sees_rank_r_where_the_adapter_acts(llama_lora):
    model, merged, _, _ = llama_lora
    found = st.edit_forensics(model, merged)
    want = {f"blocks.{layer}.{NAMES[t]}" for layer in range(model.dims.n_layers) for t in TARGETS}
    assert set(found.changed()) == want
    assert all(found.row(n)["rank"] == R for n in want)
    assert all(r["rank"] == 0 for r in found.rows if r["name"] not in want)


def test_lora_forensics_reports_rank_usage(llama_lora, tmp_path):
    model, _, factors, folder = llama_lora
    result = st.lora_forensics(model, folder)
    assert {r["name"] for r in result.rows} == set(factors)
    for row in result.rows:
        a, b, scaling = factors[row["name"]]
        assert row["r"] == R and row["rank"] == R and 1 <= row["rank_threshold"] <= R
        want = torch.linalg.svdvals(scaling * b.double() @ a.double())[:R]
        assert torch.allclose(result.values[row["name"]], want, rtol=1e-9, atol=1e-12)
        assert len(row["intruder_max_cos"]) == 10 and row["intruders"] == len(row["intruder_indices"])
    again = st.LoraForensics.load(result.save(tmp_path / "res"))
    assert again.rows == json.loads(json.dumps(result.rows)) and result.plot().axes


def test_rslora_alpha_pattern_and_conv1d_match_peft(tmp_path):
    """Scaling alpha/√r, a per-module alpha, and GPT-2's [in, out] Conv1D weights, against peft's merge."""
    for kind, config in (
        ("llama", dict(r=4, lora_alpha=8, use_rslora=True, alpha_pattern={"down_proj": 2}, target_modules=TARGETS)),
        ("gpt2", dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)),
    ):
        model = tiny_model(kind)
        merged, factors = _adapter(model, tmp_path / kind, seed=1, **config)
        read = read_adapter(tmp_path / kind)
        for name, module in read.modules.items():
            assert module.scaling == pytest.approx(factors[name][2])
            delta = merged.hf.get_submodule(name).weight.double() - model.hf.get_submodule(name).weight.double()
            assert (module.delta() - delta).abs().max() <= 1e-6, name


def test_intruder_dimensions_on_planted_updates():
    g = torch.Generator().manual_seed(0)
    n = 64
    q1, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.linspace(5, 0.1, n, dtype=torch.float64)
    base = q1 @ torch.diag(s) @ q2.T
    # re-weighting the base's own top direction brings nothing new
    aligned = base + 3.0 * torch.outer(q1[:, 0], q2[:, 0])
    assert intruders(base, aligned, 5, 0.5)[0] == []
    # a strong update along a random direction becomes the tuned matrix's top direction: an intruder
    x = torch.randn(n, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    tuned = base + 20.0 * torch.outer(x / x.norm(), y / y.norm())
    found, best = intruders(base, tuned, 5, 0.5)
    assert found == [0] and best[0] < 0.5 and min(best[1:]) > 0.5


def test_bad_adapters_fail_in_one_line(llama_lora, tmp_path):
    model, _, _, folder = llama_lora
    with pytest.raises(MechscopeError, match="not a peft adapter folder"):
        read_adapter(tmp_path)
    other = tiny_model("gpt2")
    with pytest.raises(MechscopeError, match="does not have"):
        st.lora_forensics(other, folder)
    bin_only = tmp_path / "bin"
    bin_only.mkdir()
    (bin_only / "adapter_config.json").write_text((folder / "adapter_config.json").read_text())
    (bin_only / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(MechscopeError, match="never loaded") as err:
        read_adapter(bin_only)
    assert "\n" not in str(err.value)
    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True}))
    with pytest.raises(MechscopeError, match="DoRA"):
        read_adapter(dora)
