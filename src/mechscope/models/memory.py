"""Whether a model fits where it is asked to load, checked before any weight is read: a
model larger than the memory it would land in is refused with the size it needs, instead
of sending the machine into swap (or the GPU into an out-of-memory error half-way)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

from ..errors import MechscopeError

log = logging.getLogger(__name__)
GiB = 2**30


def parameter_count(model_class, config) -> int:
    """Parameters of `model_class` built from `config`, counted on the meta device (no memory)."""
    build = getattr(model_class, "from_config", None) or model_class._from_config
    with torch.device("meta"):
        model = build(config)
    return sum(p.numel() for p in model.parameters())


def stored_count(folder: Path) -> int | None:
    """Parameters stored in a folder's safetensors files, from their headers alone (no
    tensor is read); None where there are none or a header cannot be read."""
    files = sorted(Path(folder).glob("*.safetensors"))
    total = 0
    for file in files:
        try:
            with open(file, "rb") as handle:
                size = int.from_bytes(handle.read(8), "little")
                header = json.loads(handle.read(size)) if 0 < size < 100_000_000 else None
        except (OSError, ValueError):
            return None
        if not isinstance(header, dict):
            return None
        total += sum(
            math.prod(v.get("shape", [])) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
        )
    return total or None


def available_bytes(device: torch.device | None) -> int | None:
    """Memory free for new tensors on `device` (the CPU: MemAvailable; a GPU: free memory);
    None where it cannot be told."""
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device is None or device.type == "cpu":
        return available_memory()
    return None


def available_memory() -> int | None:
    """Bytes of memory this machine can still hand out (Linux MemAvailable, else the free
    physical pages), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(
    name: str, model_class, config, dtype: torch.dtype, device: torch.device | None, folder: str | None = None
) -> None:
    """Refuse, in one line, a model whose weights alone would not fit in the free memory of
    `device`. Sizes come from a local `folder`'s safetensors headers when it has them (free),
    else from the model built on the meta device."""
    free = available_bytes(device)
    if free is None:
        return
    try:
        count = (stored_count(Path(folder)) if folder else None) or parameter_count(model_class, config)
        need = count * dtype.itemsize
    except Exception as err:  # noqa: BLE001  an estimate that cannot be made must not stop the load itself
        log.debug("could not estimate the size of %s: %s", name, err)
        return
    if need > free:
        where = "this machine" if device is None or device.type == "cpu" else str(device)
        raise MechscopeError(
            f"{name} needs about {need / GiB:.1f} GiB for its weights in {str(dtype).removeprefix('torch.')}, but "
            f"{where} has {free / GiB:.1f} GiB free: load it in a smaller dtype (--dtype bfloat16), on a GPU "
            "(--device cuda), or spread over several devices (load(..., device_map='auto'), with accelerate installed)"
        )
