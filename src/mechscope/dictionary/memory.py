"""How much memory a dictionary takes: its dtype (from a table), its parameter count, and the
check `build` makes before allocating one (a corrupt cfg.json must not exhaust the machine)."""

from __future__ import annotations

import torch

from ..errors import MechscopeError
from ..models.memory import available_memory
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
