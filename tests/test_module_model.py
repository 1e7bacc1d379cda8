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


def test_what_needs_a_transformer_is_one_line_error():
    model = ModuleModel(NET)
    for name in ("dims", "adapter", "W_E", "generate"):
        with pytest.raises(
            ms.MechscopeError, match=rf"^TwoLayer is not a transformer: '{name}' needs an architecture adapter"
        ):
            getattr(model, name)
    assert getattr(model, "dims", None) is None and not hasattr(model, "adapter")  # still tells the kinds apart
    with pytest.raises(AttributeError, match="no_such_thing"):
        getattr(model, "no_such_thing")  # noqa: B009


def test_positions_and_copies_are_refused_without_a_position_axis():
    model = ModuleModel(NET)
    with pytest.raises(ms.MechscopeError, match=r"^TwoLayer's sites have no position axis: leave positions= out"):
        model.run(X, record="fc1.hook_out", positions=-1)
    with pytest.raises(ms.MechscopeError, match="^TwoLayer has no transformer blocks: copies join at a block's input"):
        model.run(X, copies={0: 2})
    assert model.run(X, record="fc1.hook_out").cache["fc1.hook_out"].shape == (5, 8)  # no position cut


def test_module_model_and_model_share_one_base():
    from mechscope.hooked_model import HookedModel
    from mechscope.model import Model

    assert issubclass(ModuleModel, HookedModel) and issubclass(Model, HookedModel)
    assert not issubclass(ModuleModel, Model)
    model = ModuleModel(NET)
    with model.edit(edits.zero("act.hook_out")):
        assert torch.allclose(model.run(X).logits, NET.fc2.bias.expand(5, 3))
    assert torch.equal(model.run(X).logits, NET(X))
