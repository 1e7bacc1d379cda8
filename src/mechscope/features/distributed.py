"""The collective steps of a feature-store build under `torchrun`: rank 0's decisions shared
with every rank (or its refusal, so that no rank waits on a rank 0 that stopped), and the
ranks' accumulators merged into rank 0's.

Tensors travel over the process group (gloo on CPU; NCCL from the GPU), decisions as JSON:
nothing is pickled."""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
import torch.distributed as dist

from ..errors import MechscopeError
from .accumulate import Accumulator
from .merge import merge


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _broadcast_json(value, rank: int):
    """Rank 0's `value` (JSON data) on every rank."""
    data = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8) if rank == 0 else None
    size = torch.tensor([0 if data is None else len(data)], dtype=torch.int64, device=_device())
    dist.broadcast(size, src=0)
    buf = data.to(_device()) if data is not None else torch.empty(int(size.item()), dtype=torch.uint8, device=_device())
    dist.broadcast(buf, src=0)
    return json.loads(bytes(buf.cpu().tolist()).decode())  # rank 0 too: every rank reads the same data


def on_rank0(rank: int, world: int, step: Callable[[], dict]) -> dict:
    """Run `step` on rank 0 only and give its (JSON) result to every rank; if it fails, every
    rank raises (the others a MechscopeError with rank 0's message)."""
    if world == 1:
        return step()
    if rank == 0:
        try:
            result = step()
        except Exception as err:
            _broadcast_json({"error": str(err) if isinstance(err, MechscopeError) else f"rank 0 failed: {err!r}"}, 0)
            raise
        return _broadcast_json({"ok": result}, 0)["ok"]
    message = _broadcast_json(None, rank)
    if "error" in message:
        raise MechscopeError(message["error"])
    return message["ok"]


def gather(acc: Accumulator, rank: int, world: int) -> Accumulator:
    """Every rank's statistics merged into rank 0's accumulator (returned there); the other
    ranks send theirs and go on with an empty one. One state at a time reaches rank 0, so its
    memory holds two, whatever the world size."""
    if world == 1:
        return acc
    device = _device()
    if rank != 0:
        for name in Accumulator.STATE:
            dist.send(getattr(acc, name).contiguous().to(device), dst=0)
        return Accumulator(acc.d, acc.cfg)
    for src in range(1, world):
        other = Accumulator(acc.d, acc.cfg)
        for name in Accumulator.STATE:
            buf = torch.empty_like(getattr(other, name), device=device)
            dist.recv(buf, src=src)
            setattr(other, name, buf.cpu())
        merge(acc, other)
    return acc
