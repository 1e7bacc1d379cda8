"""Atomic file output: write to a temporary sibling, then rename, so a crash never
leaves a half-written file where a good one is expected."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def write_figure(path: Path, fig, **savefig_kwargs) -> Path:
    """Save a matplotlib figure atomically; the format follows the file's suffix (PNG by default)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    savefig_kwargs = {"dpi": 110, "bbox_inches": "tight", **savefig_kwargs}
    return _atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kwargs))


def write_text(path: Path, text: str) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: Path, data) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save tensors as safetensors (contiguous CPU copies), atomically."""
    ready = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _atomic(path, lambda tmp: save_file(ready, tmp, metadata=metadata))
