"""The jaxtyping annotations of the weight accessors hold at run time, with dimension
names consistent across one call (d_model is d_model everywhere)."""

from __future__ import annotations

import pytest
from beartype import beartype
from jaxtyping import jaxtyped

from mechscope.weights import WeightAccess

from .models.tiny import tiny_model

CHECKED = ["W_Q", "W_K", "W_V", "W_O", "b_Q", "b_O", "W_in", "W_out", "head_results"]


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama", "gemma2", "bert", "toy"])
def test_weight_shapes_match_annotations(kind, monkeypatch):
    model = tiny_model(kind)
    for name in CHECKED:
        monkeypatch.setattr(WeightAccess, name, jaxtyped(typechecker=beartype)(getattr(WeightAccess, name)))
    for layer in range(model.dims.n_layers):
        for name in CHECKED[:-1]:
            getattr(model, name)(layer)
    for prop in ("W_E", "W_U", "b_U"):
        getattr(model, prop)
    assert model.W_Q(0).shape == (model.dims.n_heads, model.dims.d_model, model.dims.d_head)
    assert model.W_K(0).shape[0] == model.dims.n_kv_heads
