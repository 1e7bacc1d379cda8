"""Atomic file output: write to a temporary sibling, flush it to disk, then rename, so a
crash never leaves a half-written file where a good one is expected. A path that cannot be
written (inside a file, read-only, a folder) and a write that fails (full disk, quota, I/O
error) fail with a one-line MechscopeError; the temporary file is removed and the previous
file stays as it was.

Long jobs hold `folder_lock(folder)` on their output folder: a second writer into the same
folder is refused, and the temporary files that a killed writer left there are removed.
`write_checkpoint` commits a training checkpoint in the order that survives a kill at any
moment (step file, then state.json, then old step files removed)."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import MechscopeError

try:
    import fcntl
except ImportError:  # Windows: output folders are not locked
    fcntl = None  # type: ignore[assignment]  # a module or None, checked before use

log = logging.getLogger(__name__)
LOCK_FILE = ".mechscope.lock"
_TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp(prefix=".NAME.", suffix=".tmp")
_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
_NO_SYNC = (errno.EINVAL, errno.ENOTSUP, errno.EBADF)  # file systems that cannot sync: nothing to wait for


def _unwritable(path: Path, folder: Path, err: OSError) -> MechscopeError:
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), folder)
    why = f"{blocker} is a file, not a folder" if blocker.exists() and not blocker.is_dir() else err.strerror or err
    return MechscopeError(f"cannot write {path} ({why}): choose a writable output path")


def write_error(path: str | Path, err: Exception) -> MechscopeError:
    """One line for a write that failed half-way: a full disk says so, other errors name themselves."""
    code = getattr(err, "errno", None)
    if code is None and isinstance(err, SafetensorError):  # safetensors reports "... (os error 28)"
        found = re.search(r"os error (\d+)", str(err))
        code = int(found.group(1)) if found else None
    if code in _FULL:
        return MechscopeError(f"{_FULL[code]} writing {path}: free space or choose another --out")
    why = os.strerror(code) if code else str(err).splitlines()[0]
    return MechscopeError(
        f"cannot write {path} ({why}): the previous file is unchanged; check the disk or choose another --out"
    )


def make_folder(folder: str | Path) -> Path:
    """Create `folder` (and its parents) now, so that an output path that cannot be written
    fails before any work instead of after it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MechscopeError(f"cannot write into {folder} (it is a file, not a folder): choose another output path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise (write_error(folder, err) if err.errno in _FULL else _unwritable(folder, folder, err)) from None
    if not os.access(folder, os.W_OK):
        raise MechscopeError(f"cannot write into {folder} (permission denied): choose a writable output path")
    return folder


def fsync_folder(folder: str | Path) -> None:
    """Make the renames and new names in `folder` durable (a no-op where folders cannot be synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in _NO_SYNC:
            raise write_error(Path(folder), err) from None
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # a full disk or quota can surface only here (delayed allocation, network disks)
    except OSError as err:
        if err.errno not in _NO_SYNC:
            raise
    finally:
        os.close(fd)


def _atomic(path: Path, write, durable: bool = False) -> Path:
    """Write through `write(tmp)`, fsync, rename onto `path`; `durable` also syncs the folder
    (so the new name itself survives a power cut)."""
    path = Path(path)
    if path.is_dir():
        raise MechscopeError(f"cannot write {path} (it is a folder): give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        if err.errno in _FULL:
            raise write_error(path, err) from None
        raise _unwritable(path, path.parent, err) from None
    os.close(fd)
    try:
        write(tmp)
        _fsync_file(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        raise write_error(path, err) from None
    finally:
        if os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:  # a failing disk: the next lock holder removes it (`remove_orphans`)
                pass
    if durable:
        fsync_folder(path.parent)
    return path


def write_bytes(path: Path, data: bytes, *, durable: bool = False) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_bytes(data), durable)


def write_figure(path: Path, fig, **savefig_kwargs) -> Path:
    """Save a matplotlib figure atomically; the format follows the file's suffix (PNG by default)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise MechscopeError(f"cannot write {path}: matplotlib does not write .{fmt} files; use .png, .svg or .pdf")
    savefig_kwargs = {"dpi": 110, "bbox_inches": "tight", **savefig_kwargs}
    return _atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kwargs))


def write_text(path: Path, text: str, *, durable: bool = False) -> Path:
    return _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), durable)


def write_json(path: Path, data, *, durable: bool = False) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n", durable=durable)


def write_tensors(
    path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None, *, durable: bool = False
) -> Path:
    """Save tensors as safetensors (contiguous CPU copies), atomically."""
    ready = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _atomic(path, lambda tmp: save_file(ready, tmp, metadata=metadata), durable)


def write_checkpoint(folder: str | Path, step_file: str, tensors: Mapping[str, Tensor], state: dict) -> None:
    """Commit a checkpoint so that a kill at any moment leaves `state.json` naming a whole
    step file: the step file (synced, with its folder), then `state.json` (which names it;
    synced), and only then the older `step-*.safetensors` files are deleted."""
    folder = Path(folder)
    write_tensors(folder / step_file, tensors, durable=True)
    write_json(folder / "state.json", state, durable=True)
    for old in folder.glob("step-*.safetensors"):
        if old.name != step_file:
            old.unlink(missing_ok=True)


# One writer per output folder


@contextmanager
def folder_lock(folder: str | Path, *, rank: int = 0, world: int = 1) -> Iterator[Path]:
    """Hold `folder` (created if needed) for this job: a second job that asks for it while
    this one runs is refused in one line. The lock is an `flock` on `folder/.mechscope.lock`,
    which the kernel drops when the process ends, however it ends (kill -9 included). On
    taking it, the temporary files that killed writers left in the folder are removed.
    Under DDP rank 0 takes it and every rank learns whether it could."""
    folder = make_folder(folder)
    fd, refusal = None, None
    if rank == 0:
        try:
            fd = _take_lock(folder)
        except MechscopeError as err:
            refusal = err
    if world > 1:
        _agree(refusal is None, folder)
    if refusal is not None:
        raise refusal
    try:
        if fd is not None:
            remove_orphans(folder)
        yield folder
    finally:
        if fd is not None:
            try:
                os.ftruncate(fd, 0)  # an idle folder's lock file names nobody
            except OSError:
                pass
            os.close(fd)


def _take_lock(folder: Path) -> int:
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as err:
        raise (write_error(path, err) if err.errno in _FULL else _unwritable(path, folder, err)) from None
    if fcntl is None:
        log.warning("cannot lock %s on this system: a second job writing into it would not be stopped", folder)
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise MechscopeError(f"{folder} is being written by {holder}; wait for it or choose another --out") from None
    except OSError as err:  # a file system without locks: go on, unprotected
        log.warning("cannot lock %s (%s): a second job writing into it would not be stopped", folder, err.strerror)
        return fd
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
    except OSError:  # a full disk: the lock holds all the same, only its note is missing
        pass
    return fd


def _agree(ok: bool, folder: Path) -> None:
    """All ranks learn whether rank 0 took the lock (so that none waits for a refused rank 0)."""
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    refused = torch.tensor([0 if ok else 1], device=device)
    dist.all_reduce(refused, op=dist.ReduceOp.MAX)
    if refused.item() and ok:
        raise MechscopeError(
            f"{folder} is being written by another job (rank 0 could not lock it); wait for it or choose another --out"
        )


def remove_orphans(folder: str | Path) -> list[Path]:
    """Delete the temporary files (this module's `.NAME.XXXXXXXX.tmp`) that killed writers
    left in `folder` and its sub-folders (one level down; not in a sub-folder with a lock
    of its own). Call it only while holding the folder's lock."""
    folder = Path(folder)
    places = [folder] + [
        p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not (p / LOCK_FILE).exists()
    ]
    removed = []
    for place in places:
        for path in place.iterdir():
            if _TMP_NAME.match(path.name) and path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) that an interrupted writer left in %s", len(removed), folder)
    return removed


def read_tensors(path: str | Path, what: str = "tensors", device: str = "cpu") -> dict[str, Tensor]:
    """Load a safetensors file; a missing, truncated or corrupt one fails in one line."""
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as err:
        raise MechscopeError(
            f"cannot read the {what} in {path} ({str(err).splitlines()[0]}): the file is missing, "
            "truncated or corrupt; restore it or write it again"
        ) from None


def read_json(path: str | Path) -> dict:
    """A JSON object from a file; an unreadable or malformed one fails in one line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MechscopeError(f"cannot read {path} ({err}): restore the file or write it again") from None
    if not isinstance(data, dict):
        raise MechscopeError(
            f"{path} holds {type(data).__name__}, not a JSON object: restore the file or write it again"
        )
    return data
