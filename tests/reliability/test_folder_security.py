"""A model folder is data: its cfg.json can only name a class that code registered, with
arguments of the declared types; nothing named in a file is imported, called or run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import mechscope as ms
from mechscope.cli import main
from mechscope.zoo.storage import MODULE_CLASSES, load_module_folder, register_module_class, save_module_folder


def _folder(tmp_path, cfg: dict):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({"w": torch.zeros(1)}, folder / "model.safetensors")
    return folder


def _refused_by_cli(folder, capsys) -> str:
    code = main(["info", str(folder)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_a_folder_naming_os_system_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = _folder(tmp_path, {"class": "os:system", "kwargs": {"command": f"touch {marker}"}})
    assert "not a registered model class" in _refused_by_cli(folder, capsys)
    with pytest.raises(ms.MechscopeError, match="cannot choose code to run"):
        load_module_folder(folder)
    assert not marker.exists()


def test_a_folder_naming_a_mechscope_writer_writes_nothing(tmp_path, capsys):
    target = tmp_path / "written.txt"
    folder = _folder(tmp_path, {"class": "mechscope.io:write_text", "kwargs": {"path": str(target), "text": "x"}})
    assert "not a registered model class" in _refused_by_cli(folder, capsys)
    assert not target.exists()


@pytest.mark.parametrize(
    "named", ["mechscope.zoo.transformer:ToyTransformer", "torch.nn:Linear", "Linear", "builtins:eval", "", 3, None]
)
def test_classes_that_exist_but_are_not_registered_are_refused(tmp_path, named):
    folder = _folder(tmp_path, {"class": named, "kwargs": {}})
    with pytest.raises(ms.MechscopeError):
        load_module_folder(folder)


@pytest.mark.parametrize(
    "kwargs, why",
    [
        ({"channels1": 16, "channels2": 32, "n_classes": 10, "extra": 1}, "unknown argument"),
        ({"channels1": "16"}, "must be int"),
        ({"channels1": True}, "must be int"),
        ({"channels1": 1.5}, "must be int"),
        ({"channels1": -3}, "cannot be built"),
        ({"channels1": 2_000_000, "channels2": 2_000_000}, "parameters"),
        (["channels1"], "must be a JSON object"),
    ],
)
def test_arguments_are_checked_before_anything_is_built(tmp_path, kwargs, why):
    folder = _folder(tmp_path, {"class": "DigitsCNN", "kwargs": kwargs})
    with pytest.raises(ms.MechscopeError, match=why):
        load_module_folder(folder)


def test_legacy_class_paths_are_matched_as_text_and_registered_classes_round_trip(tmp_path):
    digits = ms.load("zoo:digits").hf
    folder = save_module_folder(digits, {"channels1": 16, "channels2": 32, "n_classes": 10}, tmp_path / "d")
    assert json.loads((folder / "cfg.json").read_text())["class"] == "DigitsCNN"
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "class": "mechscope.zoo.digits:DigitsCNN"}))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(load_module_folder(folder)(x), digits(x))


def test_an_unregistered_class_cannot_be_saved_and_a_registered_one_can(tmp_path):
    class Net(nn.Module):
        def __init__(self, d: int = 3):
            super().__init__()
            self.fc = nn.Linear(d, 2)

    with pytest.raises(ms.MechscopeError, match="not a registered module class"):
        save_module_folder(Net(), {"d": 3}, tmp_path / "n")
    register_module_class("test_reliability.Net")(Net)
    try:
        save_module_folder(Net(), {"d": 3}, tmp_path / "n")
        assert isinstance(load_module_folder(tmp_path / "n"), Net)
        with pytest.raises(ms.MechscopeError, match="already registered"):
            register_module_class("test_reliability.Net")(nn.Linear)
    finally:
        MODULE_CLASSES.pop("test_reliability.Net")
