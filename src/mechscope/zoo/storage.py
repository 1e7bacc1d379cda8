"""Zoo folders for models that are not Hugging Face transformers (toy models, CNNs):
`cfg.json` names the class and its constructor arguments, `model.safetensors` holds
the weights. Written atomically; loaded strictly (a missing, extra or truncated
tensor is an error, never a half-loaded model)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import MechscopeError


def save_module_folder(module: nn.Module, kwargs: dict, out_dir: Path, extra_files: dict[str, str] | None = None) -> Path:
    """Write cfg.json + model.safetensors (+ extra text files) into out_dir, atomically."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        cls = type(module)
        (tmp / "cfg.json").write_text(json.dumps({"class": f"{cls.__module__}:{cls.__qualname__}", "kwargs": kwargs}, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, tmp / "model.safetensors")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        umask = os.umask(0)
        os.umask(umask)
        for path in [tmp, *tmp.iterdir()]:  # mkdtemp makes 0700; give the folder normal permissions
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def is_module_folder(path: Path) -> bool:
    return (Path(path) / "cfg.json").is_file() and not (Path(path) / "config.json").is_file()


def load_module_folder(path: Path) -> nn.Module:
    """Rebuild the module named in cfg.json and load its weights strictly."""
    from ..io import read_json
    path = Path(path)
    cfg = read_json(path / "cfg.json")
    if not isinstance(cfg.get("class"), str):
        raise MechscopeError(f"'{path}' is not a model folder: its cfg.json names no model class (a dictionary, "
                             "cache or saved result?); give a Hugging Face folder (config.json), a hub id or zoo:NAME")
    module_name, _, class_name = cfg["class"].partition(":")
    # Importing named code is what pickle does; only mechscope's modules, or ones the
    # caller has already imported, are allowed.
    if not module_name.startswith("mechscope.") and module_name not in sys.modules:
        raise MechscopeError(f"{path}/cfg.json names class {cfg['class']!r}: import {module_name} first "
                             "(only mechscope's own modules are imported automatically)")
    cls = getattr(importlib.import_module(module_name), class_name)
    module = cls(**cfg["kwargs"])
    try:
        state = load_file(path / "model.safetensors")
    except (SafetensorError, OSError) as err:
        raise MechscopeError(f"weights file {path / 'model.safetensors'} is corrupt or truncated ({err}); "
                             "retrain it with `mechscope zoo train NAME` or restore the file") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise MechscopeError(f"weights in {path} do not match {class_name}: {str(err).splitlines()[0]}") from None
    return module.eval()
