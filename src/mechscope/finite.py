"""Where NaN and inf are: in a module's parameters and in recorded activations.

A model with a non-finite weight is loaded with a warning (`warn_nonfinite_parameters`)
rather than refused: inspecting it is how one finds the damage (`mechscope info`, weight
spectra, a diff against the base model). What would turn NaN into results stops instead:
training loops on a non-finite loss, `report` and `sae eval` on non-finite activations,
naming the first site (`first_nonfinite`) and the broken parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)
SHOWN = 3
"""How many broken parameters a message names."""


def is_finite(t: Tensor) -> bool:
    """True when every value of a floating-point tensor is finite (other dtypes always are)."""
    return not (t.is_floating_point() or t.is_complex()) or bool(torch.isfinite(t).all())


def nonfinite_parameters(module: nn.Module, limit: int = 3) -> list[str]:
    """Names of up to `limit` parameters holding NaN or inf (one pass; parameters left on
    the meta device by offloading are skipped)."""
    named = [
        (n, p.detach())
        for n, p in module.named_parameters()
        if not p.is_meta and (p.is_floating_point() or p.is_complex())
    ]
    if not named:
        return []
    # NaN and inf survive a sum: one read of each tensor and one host sync for the whole model;
    # a flagged sum (which could also be an overflow) is confirmed element by element
    device = named[0][1].device  # parameters spread over devices (device_map) report to one
    flagged = torch.stack([p.sum().isfinite().to(device) for _, p in named]).logical_not()
    suspects = [named[i] for i in flagged.nonzero().flatten().tolist()]
    return [name for name, p in suspects if not is_finite(p)][:limit]


def warn_nonfinite_parameters(module: nn.Module, model_name: str) -> list[str]:
    """Log a warning naming the parameters of `module` that hold NaN or inf; returns them."""
    bad = nonfinite_parameters(module, SHOWN)
    if bad:
        log.warning(
            "%s has NaN or inf in its weights (%s%s): its activations will be NaN where they pass; "
            "restore or retrain it",
            model_name,
            ", ".join(bad),
            ", ..." if len(bad) == SHOWN else "",
        )
    return bad


def first_nonfinite(tensors: Mapping[str, Tensor | None]) -> str | None:
    """The first name (in the mapping's order, e.g. a forward's) whose tensor holds NaN or inf."""
    return next((name for name, t in tensors.items() if t is not None and not is_finite(t)), None)
