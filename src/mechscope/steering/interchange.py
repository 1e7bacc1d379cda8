"""Steering vectors in other tools' formats: llama.cpp control vectors (GGUF, through the
`gguf` package) and the in-memory vectors of steering-vectors and repeng.

llama.cpp's control vector: GGUF with general.architecture = "controlvector", keys
controlvector.model_hint (the model type, e.g. "llama") and controlvector.layer_count,
and one float32 [d_model] tensor `direction.{l}` per layer, added to the output of block
l, i.e. mechscope's `blocks.{l}.hook_resid_post`. llama.cpp refuses layer 0 (its table of
layers starts at 1), so a direction at block 0's output cannot be exported; the same
activation named `blocks.{l}.hook_resid_pre` is exported as block l - 1's output.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import torch

from .. import io
from ..errors import MechscopeError
from .vector import SteeringVector, layer_of

log = logging.getLogger(__name__)

ARCH = "controlvector"
_DIRECTION = re.compile(r"^direction\.(\d+)$")


def _block_outputs(vector: SteeringVector) -> dict[int, torch.Tensor]:
    """layer -> direction at that block's output; refuses what llama.cpp cannot hold."""
    out: dict[int, torch.Tensor] = {}
    for site, direction in vector.directions.items():
        layer = layer_of(site)
        if layer is not None and site.endswith(".hook_resid_pre") and layer > 0:
            log.info("%s is block %d's output: exported as direction.%d", site, layer - 1, layer - 1)
            layer -= 1
        elif layer is None or not (site.endswith(".hook_resid_post") or site.endswith(".hook_resid_pre")):
            raise MechscopeError(
                f"llama.cpp control vectors steer block outputs only, not '{site}': "
                "read the vector at blocks.L.hook_resid_post"
            )
        if layer == 0:
            raise MechscopeError(
                f"'{site}' is block 0's output, which llama.cpp cannot steer (direction.0 is not a valid layer "
                "there): drop it with vector.only(...) or read the vector at a later layer"
            )
        out[layer] = out[layer] + direction if layer in out else direction
    return out


def export_gguf(vector: SteeringVector, path: str | Path, *, model_hint: str | None = None) -> Path:
    """Write `vector` as a llama.cpp control vector (written atomically)."""
    import gguf

    layers = _block_outputs(vector)
    hint = model_hint or str(vector.meta.get("model_type") or "") or vector.model_name or "unknown"
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "cv.gguf"
        writer = gguf.GGUFWriter(str(staged), ARCH)
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(layers))
        for layer in sorted(layers):
            writer.add_tensor(f"direction.{layer}", layers[layer].float().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        data = staged.read_bytes()
    return io.write_bytes(Path(path), data)


def _field(reader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def import_gguf(path: str | Path, *, model_name: str = "") -> SteeringVector:
    """A llama.cpp control vector as a SteeringVector at blocks.{l}.hook_resid_post."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise MechscopeError(f"no control vector at '{path}': give a .gguf file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - the gguf reader raises many kinds on a bad file
        raise MechscopeError(f"cannot read {path} as GGUF ({type(err).__name__}: {err})") from None
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise MechscopeError(f"{path} is a GGUF of architecture {arch!r}, not a llama.cpp control vector")
    directions = {}
    for tensor in reader.tensors:
        found = _DIRECTION.match(tensor.name)
        if not found:
            log.warning("%s: ignoring tensor %s (not direction.L)", path, tensor.name)
            continue
        layer = int(found.group(1))
        if layer == 0:
            raise MechscopeError(f"{path} has direction.0, which llama.cpp refuses (layers start at 1): fix the file")
        directions[f"blocks.{layer}.hook_resid_post"] = torch.tensor(tensor.data, dtype=torch.float32).flatten()
    if not directions:
        raise MechscopeError(f"{path} holds no direction.L tensors")
    hint = _field(reader, f"{ARCH}.model_hint") or ""
    ordered = dict(sorted(directions.items(), key=lambda item: layer_of(item[0]) or 0))
    return SteeringVector(ordered, method="gguf", model_name=model_name, read="gguf", meta={"model_type": hint})


def from_steering_vectors(peer, *, model_name: str = "") -> SteeringVector:
    """A `steering_vectors.SteeringVector` (decoder-block layers) as a mechscope vector."""
    layer_type = getattr(peer, "layer_type", "decoder_block")
    acts = getattr(peer, "layer_activations", None)
    if not isinstance(acts, dict) or layer_type != "decoder_block":
        raise MechscopeError("give a steering_vectors.SteeringVector trained on decoder blocks")
    dirs = {f"blocks.{int(k)}.hook_resid_post": torch.as_tensor(v).float().flatten() for k, v in sorted(acts.items())}
    return SteeringVector(dirs, method="mean_diff", model_name=model_name, read="steering-vectors")


def from_repeng(peer, *, model_name: str = "") -> SteeringVector:
    """A repeng `ControlVector` (`directions` {layer: array}, applied to block outputs as
    llama.cpp does) as a mechscope vector."""
    directions = getattr(peer, "directions", None)
    if not isinstance(directions, dict) or not directions:
        raise MechscopeError("give a repeng ControlVector (an object with a non-empty `directions` dict)")
    dirs = {
        f"blocks.{int(k)}.hook_resid_post": torch.as_tensor(v).float().flatten() for k, v in sorted(directions.items())
    }
    hint = str(getattr(peer, "model_type", "") or "")
    return SteeringVector(dirs, method="repeng", model_name=model_name, read="repeng", meta={"model_type": hint})
