"""A `Trainer`'s checkpoints: its whole state in one folder, and the run it belongs to.

`out/checkpoint/` holds weights, Adam state, dead counts, RNG state and the data position in
one safetensors file, then `state.json` (atomic, synced, written after it; older step files
deleted last: `io.write_checkpoint`): a crash at any moment leaves a whole checkpoint.
Resuming restores all of it. `state.json` records the run's identity (settings, sites, the
model and data: `fingerprint.py`); a resume with other data or another model is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import MechscopeError
from ..io import read_json, read_tensors, write_checkpoint
from .config import CoderConfig
from .fingerprint import data_identity, differences

if TYPE_CHECKING:
    from .train import Trainer

log = logging.getLogger(__name__)


def run_identity(trainer: Trainer) -> dict:
    """The settings, sites, data and world size that make a checkpoint this run's (JSON-normalised)."""
    if trainer._data is None:  # hashing the contexts once is enough: they do not change
        trainer._data = data_identity(trainer.stream)
    cfgs = [c.replace(norm_scale=1.0).to_dict() for c in trainer.cfgs]
    train = asdict(trainer.cfg)
    if train["adam"] == "dense":  # the default: checkpoints written before the option still resume
        del train["adam"]
    return json.loads(
        json.dumps(
            {
                "train": train,
                "coders": cfgs,
                "sites": list(trainer.stream.sites),
                "data": trainer._data,
                "world": trainer.world,
            }
        )
    )


def save_checkpoint(trainer: Trainer, folder: str | Path) -> None:
    """Write the whole training state to `folder` (rank 0; atomic, previous one removed after)."""
    if trainer.rank != 0:
        return
    folder = Path(folder)
    tensors: dict[str, Tensor] = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    groups = []
    for i, (coder, opt) in enumerate(zip(trainer.coders, trainer.opts)):
        tensors |= {f"coder{i}.{k}": v for k, v in coder.state_dict().items()}
        sd = opt.state_dict()
        tensors |= {f"opt{i}.{p}.{k}": v for p, s in sd["state"].items() for k, v in s.items()}
        tensors[f"dead{i}"] = trainer.dead[i]
        groups.append(sd["param_groups"])
    name = f"step-{trainer.step_count:07d}.safetensors"
    write_checkpoint(
        folder,
        name,
        tensors,
        {
            **run_identity(trainer),
            "file": name,
            "step": trainer.step_count,
            "position": trainer.position,
            "cfgs": [c.to_dict() for c in trainer.cfgs],
            "param_groups": groups,
            "history": trainer.history,
        },
    )


def check_same_run(trainer: Trainer, state: dict, folder) -> None:
    """Refuse a checkpoint of other settings, sites, model or data, naming what differs."""
    identity = run_identity(trainer)
    identity.pop("world")  # another number of ranks takes the same steps
    if "data" not in state:  # written before checkpoints named their data: cannot be checked
        log.warning("the checkpoint in %s does not record its data: resuming without checking them", folder)
        identity.pop("data")
    found = differences({k: state.get(k) for k in identity}, identity)
    if found:
        raise MechscopeError(
            f"the checkpoint in '{folder}' belongs to another run ({'; '.join(found[:3])}): resume "
            "with the same model, data and settings, or choose another --out (or delete it)"
        )


def load_checkpoint(trainer: Trainer, folder: str | Path) -> bool:
    """Resume `trainer` from `folder` if it holds a checkpoint of this very run; False if none."""
    path = Path(folder) / "state.json"
    if not path.is_file():
        return False
    state = read_json(path)
    check_same_run(trainer, state, folder)
    trainer._build([CoderConfig.from_dict(c) for c in state["cfgs"]])
    tensors = read_tensors(Path(folder) / state["file"], "dictionary checkpoint")
    torch.set_rng_state(tensors.pop("rng.cpu"))
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors.pop("rng.cuda"))
    for i, (coder, opt) in enumerate(zip(trainer.coders, trainer.opts)):
        prefix = f"coder{i}."
        coder.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        opt_state: dict = {}
        for key, value in tensors.items():
            if key.startswith(f"opt{i}."):
                _, p, k = key.split(".", 2)
                opt_state.setdefault(int(p), {})[k] = value.to(trainer.device)
        opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"][i]})
        trainer.dead[i] = tensors[f"dead{i}"].to(trainer.device)
    trainer.step_count, trainer.position, trainer.history = state["step"], state["position"], state["history"]
    log.info("resumed dictionary training from step %d (%s)", trainer.step_count, folder)
    return True
