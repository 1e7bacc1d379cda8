"""Resumable training checkpoints for the zoo's recipes: model and optimizer tensors in one
safetensors file, committed by `state.json` (written after it, atomically; both synced to
disk; older step files deleted only then: `io.write_checkpoint`), so that a run killed at
any moment resumes from the last complete checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import MechscopeError
from ..io import read_json, read_tensors, write_checkpoint

log = logging.getLogger(__name__)


def save(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Write the tensors, then `state.json` (which names them), then drop older tensor files."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim = opt.state_dict()
    for pid, st in optim["state"].items():
        tensors.update({f"optim.{pid}.{k}": v for k, v in st.items()})
    name = f"step-{state['step']:07d}.safetensors"
    write_checkpoint(folder, name, tensors, {**state, "weights": name, "param_groups": optim["param_groups"]})
    log.info("checkpoint at step %d in %s", state["step"], folder)


def load(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, expect: dict) -> dict | None:
    """Restore model and optimizer from `folder` and return the saved state, or None when
    there is no checkpoint. `expect`: state entries (recipe, data fingerprint) that must match."""
    if not (folder / "state.json").exists():
        return None
    meta = read_json(folder / "state.json")
    differ = [k for k, v in expect.items() if meta.get(k) != v]
    if differ:
        raise MechscopeError(
            f"the checkpoint in {folder} was made with a different recipe or data (its "
            f"{' and '.join(differ)} differ): rerun with the same recipe and Python, or delete it"
        )
    tensors = read_tensors(folder / meta.pop("weights"), "checkpoint")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optim: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            optim.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": optim, "param_groups": meta.pop("param_groups")})
    log.info("resuming from step %d (%s)", meta["step"], folder)
    return meta
