"""Any torch module gets path-named sites; zoo module folders load strictly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mechscope as ms
from mechscope import edits
from mechscope.module_model import ModuleModel
from mechscope.zoo.storage import load_module_folder, register_module_class, save_module_folder


@register_module_class("tests.TwoLayer")  # a folder may only name a class that code registered
class TwoLayer(nn.Module):
    def __init__(self, d: int = 6):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


torch.manual_seed(0)
NET = TwoLayer()
X = torch.randn(5, 6)


def test_record_and_edit_any_module():
    model = ModuleModel(NET)
    run = model.run(X, record=["fc1.hook_out", "act.hook_out", "fc2.hook_in"])
    assert torch.equal(run.logits, NET(X))
    assert torch.equal(run.cache["act.hook_out"], NET.act(NET.fc1(X)))
    assert torch.equal(run.cache["fc2.hook_in"], run.cache["act.hook_out"])
    zeroed = model.run(X, edits=[edits.zero("act.hook_out")])
    assert torch.allclose(zeroed.logits, NET.fc2.bias.expand(5, 3))
    with pytest.raises(ms.MechscopeError, match="did you mean 'fc1.hook_out'"):
        model.run(X, record="fc1.hook_ot")
    with pytest.raises(ms.MechscopeError, match="not text"):
        model.run("hello")


def test_module_folder_round_trip_and_corruption(tmp_path):
    folder = save_module_folder(NET, {"d": 6}, tmp_path / "net")
    loaded = ms.load(str(folder))
    assert isinstance(loaded, ModuleModel) and torch.equal(loaded.run(X).logits, NET(X))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-20])  # truncate
    with pytest.raises(ms.MechscopeError, match="corrupt or truncated"):
        load_module_folder(folder)


def test_truncated_hf_weights_are_a_clear_error(tmp_path):
    from mechscope.zoo.transformer import ToyConfig, ToyTransformer
    ToyTransformer(ToyConfig(d_model=16, n_heads=2, d_head=8, d_mlp=0)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ms.MechscopeError, match="could not be read"):
        ms.load(str(tmp_path))
