"""How much memory a dictionary takes: its dtype (from a table), its parameter count, the
check `build` makes before allocating one (a corrupt cfg.json must not exhaust the machine),
and the one a trainer makes before a run whose state would not fit."""

from __future__ import annotations

import torch

from ..errors import MechscopeError
from ..models.memory import available_bytes, available_memory
from .config import CoderConfig

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
"""The dtypes a dictionary's cfg.json may name (a table, not an attribute looked up by a name from a file)."""


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise MechscopeError(f"unknown dtype {name!r} in a dictionary config: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def parameter_count(cfg: CoderConfig) -> int:
    """Parameters of a dictionary of `cfg`, from its widths (encoder, decoder, biases, skip, router)."""
    per_latent = cfg.d_in + cfg.out_dim + 3  # W_enc column, W_dec row, b_enc and gated/jumprelu extras
    router = cfg.d_in * cfg.n_experts if cfg.arch == "switch" else 0
    return cfg.d_sae * per_latent + cfg.out_dim + (cfg.d_in * cfg.out_dim if cfg.skip else 0) + router


def check_memory(cfg: CoderConfig) -> None:
    """Refuse a dictionary whose initialisation would need more memory than is available:
    the parameters plus the float32 random draws and copies they start from (about two)."""
    need = parameter_count(cfg) * (dtype_of(cfg.dtype).itemsize + 8)
    free = available_memory()
    if free is not None and need > free:
        raise MechscopeError(
            f"a {cfg.arch} dictionary with d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={cfg.out_dim} "
            f"would need about {need / 1e9:.1f} GB of memory but {free / 1e9:.1f} GB is available: "
            "check d_in and d_sae (a corrupt cfg.json?) or use a machine with more memory"
        )


def training_bytes(cfg: CoderConfig) -> int:
    """What training one dictionary holds for the whole run, at least: parameters, their
    gradients and Adam's two moments (4 copies), and the dead-latent counter. (The top-k
    family's sparse backward keeps d_in floats more per latent on the CPU, and each step
    its batch; neither is counted: this is a floor.)"""
    return 4 * parameter_count(cfg) * dtype_of(cfg.dtype).itemsize + 8 * cfg.d_sae


def check_training_memory(cfgs: list[CoderConfig], device: torch.device) -> None:
    """Refuse, before anything is allocated, a run whose training state alone would not fit
    in the memory free on `device`: it would otherwise fail at the first optimiser step, or
    push the machine into swap, after the set-up has already run."""
    free = available_bytes(device)
    need = sum(training_bytes(c) for c in cfgs)
    if free is None or need <= free:
        return
    what = ", ".join(f"{c.arch} d_in={c.d_in} d_sae={c.d_sae}" for c in cfgs)
    raise MechscopeError(
        f"training {what} needs at least {_size(need)} (parameters, gradients and Adam's two "
        f"moments: four copies of every weight) but {_size(free)} is free on {device}: lower d_sae, "
        "train fewer dictionaries at once, or use a machine with more memory"
    )


def _size(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e8 else f"{count / 1e6:.0f} MB"
