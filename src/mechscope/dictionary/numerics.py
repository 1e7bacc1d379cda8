"""The numbers a training step checks and reports: FVU, and the NaN/inf guard that stops a run.

Both run every step, so they use fused reductions and one host sync each; under DDP the
guard agrees across ranks, so every rank stops at the same step.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import MechscopeError


class NonFinite(MechscopeError):
    """NaN or inf in the activations or the loss."""


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Squared error over the total variance (per dimension, summed): fused reductions, no
    [batch, d] temporaries (this runs every step)."""
    x, x_hat = x.float(), x_hat.float()
    error, centred = (x - x_hat).flatten(), (x - x.mean(0)).flatten()  # (torch's var over dim 0 is slow on CPU)
    return float(torch.linalg.vecdot(error, error) / torch.linalg.vecdot(centred, centred).clamp_min(1e-12))


def check_finite(x: Tensor, what: str, step: int, world: int = 1) -> None:
    if x.numel() == 0:
        return
    low, high = torch.aminmax(x)  # one pass; NaN propagates into both
    finite = bool(torch.isfinite(low) & torch.isfinite(high))
    bad = torch.tensor([0.0 if finite else 1.0], device=x.device)  # NCCL: on the GPU
    if world > 1:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item():
        raise NonFinite(
            f"NaN or inf in {what} at step {step}: training stopped; the last checkpoint is "
            "untouched (check the model and data, then resume)"
        )
