"""Calibrators: maps from a probe's probability of "right" to a calibrated one, fitted on a
calibration split. Temperature scaling (Guo et al. 2017) divides the logit by one number;
isotonic regression (scikit-learn) fits a monotone step function."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import MechscopeError

CALIBRATIONS = ("temperature", "isotonic", "none")


def _logit(p: Tensor) -> Tensor:
    p = p.double().clamp(1e-7, 1 - 1e-7)
    return torch.log(p) - torch.log1p(-p)


def fit_calibrator(p: Tensor, y: Tensor, kind: str) -> dict[str, Tensor]:
    """Fit `kind` on probabilities p and outcomes y (0/1): {"temperature": [1]} or
    {"x": [k], "y": [k]} (isotonic thresholds), {} for none."""
    if kind not in CALIBRATIONS:
        raise MechscopeError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {kind!r}")
    if kind == "none":
        return {}
    if len(p) < 2 or len(y.unique()) < 2:
        raise MechscopeError("the calibration split needs both outcomes (some right, some wrong): give more text")
    if kind == "temperature":
        z, t = _logit(p), y.double()
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(z / log_t.exp(), t)
            loss.backward()
            return loss

        opt.step(closure)
        temperature = float(log_t.detach().exp())
        if not math.isfinite(temperature):
            raise MechscopeError("temperature scaling did not converge: give a larger calibration split")
        return {"temperature": torch.tensor([temperature])}
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p.double().numpy(), y.double().numpy())
    return {"x": torch.from_numpy(iso.X_thresholds_.copy()), "y": torch.from_numpy(iso.y_thresholds_.copy())}


def apply_calibrator(p: Tensor, params: dict[str, Tensor]) -> Tensor:
    """Calibrated probabilities (same shape as p)."""
    if not params:
        return p
    if "temperature" in params:
        return torch.sigmoid(_logit(p) / params["temperature"].double()).to(p.dtype)
    xs, ys = params["x"].double(), params["y"].double()
    q = p.double().clamp(float(xs[0]), float(xs[-1]))
    hi = torch.searchsorted(xs, q.flatten(), right=False).clamp(1, max(len(xs) - 1, 1))
    if len(xs) == 1:
        return ys[0].expand_as(p).to(p.dtype)
    x0, x1, y0, y1 = xs[hi - 1], xs[hi], ys[hi - 1], ys[hi]
    w = torch.where(x1 > x0, (q.flatten() - x0) / (x1 - x0), torch.zeros_like(x0))
    return (y0 + w * (y1 - y0)).view(p.shape).to(p.dtype)
