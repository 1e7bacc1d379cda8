"""llama.cpp control vectors (GGUF) and the peers' vectors."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from mechscope import steering
from mechscope.errors import MechscopeError
from mechscope.steering import SteeringVector


def _vector(layers=(1, 3), d=16) -> SteeringVector:
    gen = torch.Generator().manual_seed(0)
    dirs = {f"blocks.{layer}.hook_resid_post": torch.randn(d, generator=gen) for layer in layers}
    return SteeringVector(dirs, {s: 5.0 for s in dirs}, model_name="m", n_pairs=3, meta={"model_type": "llama"})


def test_gguf_round_trip_and_reader_view(tmp_path):
    v = _vector()
    out = steering.export_gguf(v, tmp_path / "cv.gguf")
    reader = gguf.GGUFReader(str(out))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.3"]
    for layer in (1, 3):
        assert tensors[f"direction.{layer}"].dtype == np.float32
        assert np.array_equal(tensors[f"direction.{layer}"], v.directions[f"blocks.{layer}.hook_resid_post"].numpy())
    back = steering.import_gguf(out)
    assert back.sites == v.sites and back.meta["model_type"] == "llama"
    for site in v.sites:
        assert torch.equal(back.directions[site], v.directions[site])


def test_layer_zero_and_other_sites_are_refused_with_a_reason(tmp_path):
    with pytest.raises(MechscopeError, match="block 0's output"):
        steering.export_gguf(_vector(layers=(0, 2)), tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists()
    odd = SteeringVector({"blocks.1.hook_mlp_out": torch.ones(4)})
    with pytest.raises(MechscopeError, match="block outputs only"):
        steering.export_gguf(odd, tmp_path / "b.gguf")
    shifted = SteeringVector({"blocks.2.hook_resid_pre": torch.ones(4)})  # the same activation as block 1's output
    back = steering.import_gguf(steering.export_gguf(shifted, tmp_path / "c.gguf"))
    assert back.sites == ["blocks.1.hook_resid_post"]
    writer = gguf.GGUFWriter(str(tmp_path / "zero.gguf"), "controlvector")
    writer.add_tensor("direction.0", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(MechscopeError, match="direction.0"):
        steering.import_gguf(tmp_path / "zero.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(MechscopeError, match="cannot read"):
        steering.import_gguf(tmp_path / "junk.gguf")


def test_peer_vectors():
    class Repeng:  # repeng's ControlVector keeps these two fields
        model_type = "llama"
        directions = {2: np.ones(8, dtype=np.float32), 1: np.zeros(8, dtype=np.float32)}

    v = steering.from_repeng(Repeng())
    assert v.sites == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    try:
        from steering_vectors import SteeringVector as PeerVector
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"steering-vectors cannot import here ({err})")
    peer = PeerVector({3: torch.arange(4.0)}, "decoder_block")
    assert torch.equal(steering.from_steering_vectors(peer).directions["blocks.3.hook_resid_post"], torch.arange(4.0))
