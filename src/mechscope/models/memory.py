"""Whether a model fits where it is asked to load, checked before any weight is read: a
model larger than the memory it would land in is refused with the size it needs, instead
of sending the machine into swap (or the GPU into an out-of-memory error half-way)."""

from __future__ import annotations

import logging
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


def available_bytes(device: torch.device | None) -> int | None:
    """Memory free for new tensors on `device` (the CPU: MemAvailable; a GPU: free memory);
    None where it cannot be told."""
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device is None or device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(name: str, model_class, config, dtype: torch.dtype, device: torch.device | None) -> None:
    """Refuse, in one line, a model whose weights alone would not fit in the free memory of `device`."""
    free = available_bytes(device)
    if free is None:
        return
    try:
        need = parameter_count(model_class, config) * dtype.itemsize
    except Exception as err:  # noqa: BLE001  an estimate that cannot be made must not stop the load itself
        log.debug("could not estimate the size of %s: %s", name, err)
        return
    if need > free:
        where = "this machine" if device is None or device.type == "cpu" else str(device)
        raise MechscopeError(
            f"{name} needs about {need / GiB:.1f} GiB for its weights in {str(dtype).removeprefix('torch.')}, but "
            f"{where} has {free / GiB:.1f} GiB free: load it in a smaller dtype (--dtype bfloat16), on a GPU "
            "(--device cuda), or spread over several devices (load(..., device_map='auto'), with accelerate installed)")
