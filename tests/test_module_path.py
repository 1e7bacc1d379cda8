"""`module_path.submodule`: the same module as torch's `get_submodule` for every path, and
torch's own error for a path that names no module."""

import pytest

from mechscope.module_path import submodule
from tests.models.tiny import tiny_model


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_walk_finds_what_get_submodule_finds(family):
    hf = tiny_model(family).hf
    for path, module in hf.named_modules():
        assert submodule(hf, path) is module is hf.get_submodule(path)


def test_a_path_that_names_no_module_raises_torchs_error():
    hf = tiny_model("gpt2").hf
    with pytest.raises(AttributeError):
        submodule(hf, "transformer.h.9")
    with pytest.raises(AttributeError):
        submodule(hf, "transformer.wte.weight")  # a parameter, not a module
