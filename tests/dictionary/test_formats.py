"""Layouts: mechscope save/load of every architecture, SAELens round trips (dtypes, folded
norm_scale), sparsify folders built by hand from its documented layout."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mechscope.dictionary import ARCHITECTURES, CoderConfig, SparseCoder, build
from mechscope.dictionary.formats import convert, detect, read, write_saelens
from mechscope.errors import MechscopeError

D_IN, D_SAE = 16, 64


def _trained_ish(arch: str, dtype: str = "float32", norm_scale: float = 1.0, input_norm: str = "none") -> SparseCoder:
    """A coder with non-trivial biases and thresholds (a few training steps' worth of state)."""
    torch.manual_seed(0)
    cfg = CoderConfig(
        arch,
        D_IN,
        D_SAE,
        k=4,
        n_experts=4,
        prefixes=(16, 64) if arch == "matryoshka" else (),
        norm_scale=norm_scale,
        input_norm=input_norm,
        dtype=dtype,
        hook_name="blocks.0.hook_resid_post",
        model_name="tiny",
    )
    coder = build(cfg)
    with torch.no_grad():
        for name, p in coder.named_parameters():
            if name.startswith("b_") or name == "r_mag":
                p.normal_(0, 0.1)
        if arch == "jumprelu":
            coder.log_threshold.uniform_(-3, -1)
        coder(torch.randn(64, D_IN))  # batchtopk/matryoshka: sets the inference threshold
    return coder.eval()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_load_round_trip(arch, tmp_path):
    coder = _trained_ish(arch, norm_scale=1.7)
    coder.save(tmp_path / "sae")
    back = SparseCoder.load(tmp_path / "sae")
    assert type(back) is type(coder) and back.cfg == coder.cfg
    for name, value in coder.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    x = torch.randn(32, D_IN)
    assert torch.equal(back.encode(x), coder.encode(x))
    assert torch.equal(back.decode(back.encode(x)), coder.decode(coder.encode(x)))
    if arch in ("batchtopk", "matryoshka"):
        assert float(back.threshold) > 0 and float(back.threshold) == float(coder.threshold)
    if arch == "jumprelu":
        assert torch.equal(back.threshold, coder.threshold)
    assert detect(tmp_path / "sae") == "mechscope"


@pytest.mark.parametrize("arch", ["relu", "topk", "gated", "jumprelu", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("norm_scale", [1.0, 2.5])
def test_saelens_round_trip_keeps_the_map_on_raw_activations(arch, norm_scale, tmp_path):
    coder = _trained_ish(arch, norm_scale=norm_scale)
    write_saelens(coder, tmp_path / "sl")
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    assert cfg["d_in"] == D_IN and cfg["d_sae"] == D_SAE and cfg["hook_name"] == "blocks.0.hook_resid_post"
    assert cfg["normalize_activations"] == "none" and cfg["apply_b_dec_to_input"] is True
    weights = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    assert weights["W_enc"].shape == (D_IN, D_SAE) and weights["W_dec"].shape == (D_SAE, D_IN)
    back = read(tmp_path / "sl")
    assert back.cfg.norm_scale == 1.0
    x = torch.randn(64, D_IN) * 3
    torch.testing.assert_close(back.encode(x), coder.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back.decode(back.encode(x)), coder.decode(coder.encode(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["relu", "topk", "gated", "jumprelu", "batchtopk", "matryoshka"])
def test_saelens_round_trip_of_a_layer_norm_coder(arch, tmp_path):
    coder = _trained_ish(arch, norm_scale=2.5, input_norm="layer_norm")
    write_saelens(coder, tmp_path / "sl")
    assert json.loads((tmp_path / "sl" / "cfg.json").read_text())["normalize_activations"] == "layer_norm"
    back = read(tmp_path / "sl")
    assert back.cfg.input_norm == "layer_norm" and back.cfg.norm_scale == 1.0
    x = torch.randn(64, D_IN) * 3 + 1
    torch.testing.assert_close(back.encode(x), coder.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(back.predict(x), coder.predict(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(MechscopeError, match="decode"):
        back.decode(back.encode(x))
    if arch == "relu":  # SAELens's layer_norm written out: standardise, encode, decode, x_hat * std + mean
        w = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
        mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
        acts = torch.relu(((x - mean) / (std + 1e-5) - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
        torch.testing.assert_close(back.encode(x), acts, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back.predict(x), (acts @ w["W_dec"] + w["b_dec"]) * std + mean, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_saelens_preserves_dtype_and_weights(dtype, tmp_path):
    coder = _trained_ish("topk", dtype=dtype)
    convert_dir = tmp_path / "mech"
    coder.save(convert_dir)
    convert(convert_dir, tmp_path / "sl", to="saelens")
    weights = load_file(str(tmp_path / "sl" / "sae_weights.safetensors"))
    assert all(w.dtype == getattr(torch, dtype) for w in weights.values())
    back = read(tmp_path / "sl")
    assert back.cfg.dtype == dtype and back.cfg.k == 4 and back.cfg.arch == "topk"
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        assert torch.equal(getattr(back, name).detach(), getattr(coder, name).detach()), name


def test_saelens_without_b_dec_on_input(tmp_path):
    """apply_b_dec_to_input=False: the encoder reads x itself; we fold b_dec W_enc into b_enc."""
    torch.manual_seed(1)
    w = {
        "W_enc": torch.randn(D_IN, D_SAE),
        "W_dec": torch.randn(D_SAE, D_IN),
        "b_enc": torch.randn(D_SAE) * 0.1,
        "b_dec": torch.randn(D_IN),
    }
    (tmp_path / "sl").mkdir()
    save_file(w, str(tmp_path / "sl" / "sae_weights.safetensors"))
    (tmp_path / "sl" / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "standard",
                "d_in": D_IN,
                "d_sae": D_SAE,
                "apply_b_dec_to_input": False,
                "dtype": "float32",
            }
        )
    )
    coder = read(tmp_path / "sl")
    x = torch.randn(32, D_IN)
    ref = torch.relu(x @ w["W_enc"] + w["b_enc"])
    torch.testing.assert_close(coder.encode(x), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(coder.decode(ref), ref @ w["W_dec"] + w["b_dec"], atol=1e-5, rtol=1e-5)


def _sparsify_folder(path, seed: int):
    torch.manual_seed(seed)
    w = {
        "encoder.weight": torch.randn(D_SAE, D_IN),
        "encoder.bias": torch.randn(D_SAE) * 0.1,
        "W_dec": torch.randn(D_SAE, D_IN),
        "b_dec": torch.randn(D_IN),
    }
    path.mkdir(parents=True)
    save_file(w, str(path / "sae.safetensors"))
    (path / "cfg.json").write_text(
        json.dumps(
            {
                "expansion_factor": 4,
                "normalize_decoder": True,
                "num_latents": 0,
                "k": 5,
                "multi_topk": False,
                "skip_connection": False,
                "d_in": D_IN,
            }
        )
    )
    return w


def _sparsify_reference(w, x, k=5):
    """sparsify's encode/decode written out: topk(relu((x - b_dec) W^T + b)), then the gathered rows."""
    pre = torch.relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
    vals, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, vals), (vals[..., None] * w["W_dec"][idx]).sum(-2) + w["b_dec"]


def test_sparsify_folder_and_hookpoints(tmp_path):
    w6 = _sparsify_folder(tmp_path / "run" / "layers.6", 0)
    _sparsify_folder(tmp_path / "run" / "layers.7", 1)
    with pytest.raises(MechscopeError, match="2 hookpoints"):
        read(tmp_path / "run")
    coder = read(tmp_path / "run", hookpoint="layers.6")
    assert coder.cfg.arch == "topk" and coder.cfg.k == 5 and coder.cfg.hook_name == "blocks.6.hook_resid_post"
    x = torch.randn(32, D_IN)
    acts, x_hat = _sparsify_reference(w6, x)
    torch.testing.assert_close(coder.encode(x), acts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(coder.decode(coder.encode(x)), x_hat, atol=1e-4, rtol=1e-5)
    assert detect(tmp_path / "run" / "layers.6") == "sparsify"
    convert(tmp_path / "run" / "layers.6", tmp_path / "mech")
    torch.testing.assert_close(SparseCoder.load(tmp_path / "mech").encode(x), acts, atol=1e-5, rtol=1e-5)


def test_unsupported_cases_say_so(tmp_path):
    with pytest.raises(MechscopeError, match="SAELens has no switch"):
        write_saelens(_trained_ish("switch"), tmp_path / "x")
    with pytest.raises(MechscopeError, match="holds no dictionary"):
        read(tmp_path)
    with pytest.raises(MechscopeError, match="unknown dictionary architecture"):
        CoderConfig("vanilla", 4, 8)
