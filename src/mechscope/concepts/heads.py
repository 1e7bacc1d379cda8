"""Many small probe heads trained at once: the L2 grid times the cross-validation folds are
one batched model ([m, d, c] weights), so one pass over the activations trains them all.

Features are standardised (mean and scale from the training rows) before the heads see
them; the frozen `Probe` keeps mean and scale, so it reads raw activations."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..errors import MechscopeError
from .labelled import Labelled, check_finite

KINDS = ("logistic", "linear", "mlp1")


@dataclass(frozen=True)
class ProbeConfig:
    """How probes are trained (the same for a task and its control task)."""

    kind: str = "logistic"
    """logistic (softmax, or sigmoid for two classes), linear (least squares onto the labels) or mlp1
    (one hidden ReLU layer)."""
    l2: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    """L2 strengths tried; the one with the best cross-validated accuracy is kept."""
    folds: int = 3
    """Cross-validation folds (split by text) for choosing the L2 strength."""
    test_fraction: float = 0.2
    """Share of the texts held out for the reported test accuracy."""
    epochs: int = 6
    """Passes over the training rows (minibatch Adam, cosine learning rate), at least `min_steps` steps."""
    min_steps: int = 300
    """Fewest optimiser steps, however few the rows (small sets need more passes to converge)."""
    batch_size: int = 1024
    """Rows per optimiser step."""
    lr: float = 0.01
    """Peak learning rate of Adam."""
    hidden: int = 128
    """Hidden width of mlp1 probes."""
    seed: int = 0
    """Seeds splits, initialisation and row order."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise MechscopeError(f"probe kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.l2 or any(not (v >= 0 and math.isfinite(v)) for v in self.l2):
            raise MechscopeError(f"l2 must be a non-empty list of finite strengths >= 0, got {self.l2}")
        if self.folds < 2 or not 0 < self.test_fraction < 1:
            raise MechscopeError("folds must be 2 or more and test_fraction between 0 and 1")
        if self.epochs < 1 or self.batch_size < 1 or self.hidden < 1 or not self.lr > 0:
            raise MechscopeError("epochs, batch_size and hidden must be at least 1 and lr positive")


def standardiser(data: Labelled, site: str, rows: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """Mean and scale of the activations over `rows` (one streamed pass, float64 sums)."""
    total, square, n = None, None, 0
    for i in range(0, len(rows), batch):
        x = data.x(site, rows[i : i + batch]).double()
        check_finite(x, site)
        total = x.sum(0) if total is None else total + x.sum(0)
        square = (x * x).sum(0) if square is None else square + (x * x).sum(0)
        n += len(x)
    assert total is not None and square is not None
    mean = total / n
    var = (square / n - mean * mean).clamp_min(0)
    scale = torch.where(var > 1e-12, var.sqrt(), torch.ones_like(var))
    return mean.float(), scale.float()


def n_outputs(kind: str, n_classes: int) -> int:
    return 1 if n_classes == 2 and kind != "mlp1" else n_classes


def init_params(kind: str, m: int, d: int, c: int, hidden: int, gen: torch.Generator) -> dict[str, Tensor]:
    if kind != "mlp1":
        return {"weight": torch.zeros(m, d, c), "bias": torch.zeros(m, c)}
    return {
        "w1": torch.randn(m, d, hidden, generator=gen) / math.sqrt(d),
        "b1": torch.zeros(m, hidden),
        "weight": torch.randn(m, hidden, c, generator=gen) / math.sqrt(hidden),
        "bias": torch.zeros(m, c),
    }


def forward(params: dict[str, Tensor], z: Float[Tensor, "row d"]) -> Float[Tensor, "m row c"]:
    """Outputs of every head on standardised rows."""
    if "w1" in params:
        h = torch.relu(_shared(z, params["w1"]) + params["b1"][:, None])
        return torch.bmm(h, params["weight"]) + params["bias"][:, None]
    return _shared(z, params["weight"]) + params["bias"][:, None]


def _shared(z: Float[Tensor, "row d"], w: Float[Tensor, "m d c"]) -> Float[Tensor, "m row c"]:
    """Every head on the same rows as one matrix product ([row, d] @ [d, m * c])."""
    m, d, c = w.shape
    # [m * c, d] rows: BLAS is several times faster in this orientation for a few outputs
    return F.linear(z, w.transpose(1, 2).reshape(m * c, d)).view(len(z), m, c).transpose(0, 1)


def row_loss(kind: str, out: Tensor, y: Int[Tensor, " row"]) -> Float[Tensor, "m row"]:
    m, b, c = out.shape
    if kind == "linear":
        target = y.float()[None, :, None] if c == 1 else F.one_hot(y, c).float()[None]
        return ((out - target) ** 2).sum(-1)
    if c == 1:
        return F.binary_cross_entropy_with_logits(out[..., 0], y.float().expand(m, b), reduction="none")
    return F.cross_entropy(out.reshape(m * b, c), y.repeat(m), reduction="none").view(m, b)


def predict(kind: str, out: Tensor) -> Tensor:
    if out.shape[-1] == 1:
        return (out[..., 0] > (0.5 if kind == "linear" else 0.0)).long()
    return out.argmax(-1)


def train_heads(
    data: Labelled,
    site: str,
    rows: Int[Tensor, " n"],
    masks: Bool[Tensor, "m n"],
    l2: Float[Tensor, " m"],
    cfg: ProbeConfig,
    norm: tuple[Tensor, Tensor],
) -> dict[str, Tensor]:
    """Train m heads at once: head j on the rows where masks[j], with L2 strength l2[j]."""
    n_classes = len(data.classes)
    c = n_outputs(cfg.kind, n_classes)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = init_params(cfg.kind, len(masks), data.width(site), c, cfg.hidden, gen)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.Adam(params.values(), lr=cfg.lr, fused=True)  # one kernel per step, not a Python loop
    per_epoch = math.ceil(len(rows) / cfg.batch_size)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / per_epoch))
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    counts = masks.sum(1).clamp_min(1).float()
    mean, scale = norm
    y_all = data.labels[rows]
    held = _standardised(data, site, rows, norm)
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=gen)
        shuffled = None if held is None else held[order]  # one gather per epoch, then slices
        for i in range(0, len(rows), cfg.batch_size):
            pick = order[i : i + cfg.batch_size]
            if shuffled is not None:
                z = shuffled[i : i + cfg.batch_size]
            else:
                z = (data.x(site, rows[pick]).float() - mean) / scale
            # each head's loss is a mean over its own rows, so heads of different folds weigh alike
            weight = masks[:, pick] * (len(rows) / counts / len(pick))[:, None]
            opt.zero_grad(set_to_none=True)
            if "w1" in params:
                per = (row_loss(cfg.kind, forward(params, z), y_all[pick]) * weight).sum(1)
                penalty = sum((params[k] ** 2).flatten(1).sum(1) for k in ("weight", "w1"))
                (per + 0.5 * l2 * penalty).sum().backward()
            else:
                _linear_grads(cfg.kind, params, z, y_all[pick], weight, l2)
            opt.step()
            sched.step()
    return {k: v.detach() for k, v in params.items()}


HELD_BYTES = 1 << 30
"""Training rows of in-memory activations up to this size are standardised once, not per batch."""


def _standardised(data: Labelled, site: str, rows: Tensor, norm: tuple[Tensor, Tensor]) -> Tensor | None:
    """The standardised training rows when the activations are in memory and small enough;
    None to stream them batch by batch (the disk cache, or sets too large to copy)."""
    if data.folder is not None or len(rows) * data.width(site) * 4 > HELD_BYTES:
        return None
    return (data.x(site, rows).float() - norm[0]) / norm[1]


@torch.no_grad()
def _linear_grads(kind: str, params: dict[str, Tensor], z: Tensor, y: Tensor, weight: Tensor, l2: Tensor) -> None:
    """Closed-form gradients of the weighted loss + L2 for linear heads (no autograd graph:
    on small batches the graph costs more than the arithmetic). Equals `row_loss`'s."""
    w = params["weight"]
    m, d, c = w.shape
    out = forward(params, z)
    if kind == "linear":
        target = y.float()[None, :, None] if c == 1 else F.one_hot(y, c).float()[None]
        g = 2 * (out - target)
    elif c == 1:
        g = torch.sigmoid(out) - y.float()[None, :, None]
    else:
        g = out.softmax(-1) - F.one_hot(y, c).float()[None]
    g = g * weight[:, :, None]
    flat = g.transpose(0, 1).reshape(len(z), m * c)
    # (g^T z)^T rather than z^T g: the same numbers, in BLAS's faster orientation
    params["weight"].grad = ((flat.T @ z).view(m, c, d).transpose(1, 2) + l2[:, None, None] * w).contiguous()
    params["bias"].grad = g.sum(1)


def accuracy(
    data: Labelled,
    site: str,
    rows: Tensor,
    masks: Bool[Tensor, "m n"],
    params: dict[str, Tensor],
    kind: str,
    norm: tuple[Tensor, Tensor],
    batch: int = 4096,
) -> Float[Tensor, " m"]:
    """Each head's accuracy on its own rows (where masks[j])."""
    right = torch.zeros(len(masks))
    mean, scale = norm
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            z = (data.x(site, rows[i : i + batch]).float() - mean) / scale
            hit = predict(kind, forward(params, z)) == data.labels[rows[i : i + batch]]
            right += (hit & masks[:, i : i + batch]).sum(1).float()
    return right / masks.sum(1).clamp_min(1).float()
