"""Atomic file output: write to a temporary sibling, then rename, so a crash never
leaves a half-written file where a good one is expected. A path that cannot be written
(inside a file, read-only, a folder) fails with a one-line MechscopeError."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import MechscopeError


def _unwritable(path: Path, folder: Path, err: OSError) -> MechscopeError:
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    why = f"{blocker} is a file, not a folder" if blocker.exists() and not blocker.is_dir() else err.strerror or err
    return MechscopeError(f"cannot write {path} ({why}): choose a writable output path")


def make_folder(folder: str | Path) -> Path:
    """Create `folder` (and its parents) now, so that an output path that cannot be written
    fails before any work instead of after it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MechscopeError(f"cannot write into {folder} (it is a file, not a folder): choose another output path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(folder, folder, err) from None
    if not os.access(folder, os.W_OK):
        raise MechscopeError(f"cannot write into {folder} (permission denied): choose a writable output path")
    return folder


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    if path.is_dir():
        raise MechscopeError(f"cannot write {path} (it is a folder): give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _unwritable(path, path.parent, err) from None
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
    if fmt not in fig.canvas.get_supported_filetypes():
        raise MechscopeError(f"cannot write {path}: matplotlib does not write .{fmt} files; use .png, .svg or .pdf")
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


def read_tensors(path: str | Path, what: str = "tensors", device: str = "cpu") -> dict[str, Tensor]:
    """Load a safetensors file; a missing, truncated or corrupt one fails in one line."""
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as err:
        raise MechscopeError(f"cannot read the {what} in {path} ({str(err).splitlines()[0]}): the file is missing, "
                             "truncated or corrupt; restore it or write it again") from None


def read_json(path: str | Path) -> dict:
    """A JSON object from a file; an unreadable or malformed one fails in one line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MechscopeError(f"cannot read {path} ({err}): restore the file or write it again") from None
    if not isinstance(data, dict):
        raise MechscopeError(f"{path} holds {type(data).__name__}, not a JSON object: restore the file or write it again")
    return data
