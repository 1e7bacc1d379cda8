"""Saved results (`mechscope.results.Saveable`): a folder round-trips, and a missing,
truncated or garbage one fails with one MechscopeError line that names the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from mechscope.errors import MechscopeError
from mechscope.results import Saveable


@dataclass
class Demo(Saveable):
    KIND = "demo_result"
    values: Tensor
    labels: list[str]
    extra: Tensor | None = None


@dataclass
class Other(Saveable):
    KIND = "other_result"
    values: Tensor


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert isinstance(err.value, MechscopeError) and "\n" not in text, text
    return text


@pytest.fixture
def saved(tmp_path) -> Path:
    return Demo(torch.arange(12.0).reshape(3, 4), ["a", "b", "c"]).save(tmp_path / "demo")


def test_a_saved_result_round_trips_with_its_optional_tensor_left_none(saved):
    back = Demo.load(saved)
    assert torch.equal(back.values, torch.arange(12.0).reshape(3, 4))
    assert back.labels == ["a", "b", "c"] and back.extra is None


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 4)


@pytest.mark.parametrize("damage", [_truncate, _garbage], ids=["truncated", "garbage"])
@pytest.mark.parametrize("name", ["cfg.json", "tensors.safetensors"])
def test_a_damaged_saved_result_fails_in_one_line_naming_the_file(saved, damage, name):
    damage(saved / name)
    with pytest.raises(MechscopeError) as err:
        Demo.load(saved)
    assert name in _one_line(err)


def test_a_cfg_that_is_not_an_object_fails_in_one_line(saved):
    (saved / "cfg.json").write_text("[1, 2, 3]\n")
    with pytest.raises(MechscopeError) as err:
        Demo.load(saved)
    assert "not a JSON object" in _one_line(err)


def test_a_missing_folder_and_another_kind_fail_in_one_line(saved, tmp_path):
    with pytest.raises(MechscopeError) as err:
        Demo.load(tmp_path / "nowhere")
    assert "no saved demo_result" in _one_line(err)
    with pytest.raises(MechscopeError) as err:
        Other.load(saved)
    assert "holds a saved 'demo_result', not a other_result" in _one_line(err)
