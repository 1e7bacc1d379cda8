"""The per-user cache of the compiled native kernels (`kernels.c`, loaded by `kernels.load`).

The library is built once per source, flags, CPU and compiler into ~/.cache/mechscope/kernels
(or $MECHSCOPE_CACHE/kernels), created 0700; it is never loaded from a folder or file that
someone else owns or can write, and a failed build is remembered instead of retried.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = [
    ["-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-shared", "-fPIC", "-fopenmp"],
    ["-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC", "-fopenmp"],
    ["-O3", "-fno-math-errno", "-shared", "-fPIC"],
]
"""Tried in order. -fopenmp links libgomp.so.1, the soname torch's own copy has, so the
kernels run on torch's thread pool; 512-bit vectors where the CPU has them (x86 only: 20%
faster bounds and scatters than gcc's default 256); no errno from sqrtf, so that lazy Adam's
loop vectorises (the values are the same); a compiler without either (Apple
clang, another architecture) builds single-threaded, portable kernels instead."""


def _cache_folder() -> Path:
    root: str | Path | None = os.environ.get("MECHSCOPE_CACHE")
    if not root:
        try:
            root = Path.home() / ".cache" / "mechscope"
        except RuntimeError:  # no home directory (some containers): a per-user temporary folder
            root = Path(tempfile.gettempdir()) / f"mechscope-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    return Path(root) / "kernels"


def _private(path: Path) -> bool:
    """Whether only this user can change `path`: owned by us and not writable by group or others.
    A library in a folder someone else controls could have been planted there."""
    if not hasattr(os, "getuid"):
        return True
    info = path.lstat()
    return info.st_uid == os.getuid() and not info.st_mode & 0o022 and not path.is_symlink()


def _private_folder() -> Path | None:
    """The kernel cache, created 0700; None (with a warning) where it is not ours alone."""
    folder = _cache_folder()
    try:
        for part in (folder.parent, folder):
            part.mkdir(mode=0o700, exist_ok=True)
    except OSError as err:
        log.warning("cannot create the kernel cache %s (%s): using the slower torch kernels", folder, err)
        return None
    unsafe = [str(p) for p in (folder.parent, folder) if not _private(p)]
    if unsafe:
        log.warning(
            "kernel cache %s is owned by another user or writable by others: not loading native "
            "kernels from it (set MECHSCOPE_CACHE to a folder of your own)",
            ", ".join(unsafe),
        )
        return None
    return folder


def cpu_id() -> str:
    """What -march=native depends on: a library built on one CPU may not run on another
    (the model name and every feature flag, or the platform where there is no /proc)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = ("model name", "flags", "Features", "CPU implementer", "CPU part", "isa", "uarch")
        return "\n".join(sorted({line for line in lines if line.startswith(keep)}))
    except OSError:
        return f"{platform.processor()} {platform.machine()} {platform.platform()}"


def _compiler_id(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return compiler


def _compile(compiler: str, target: Path) -> None:
    """Build into a temporary sibling, then rename: a concurrent or killed build never
    leaves a half-written library where a good one is expected."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        for i, flags in enumerate(FLAGS):
            try:
                subprocess.run(
                    [compiler, *flags, str(SOURCE), "-o", tmp, "-lm"], check=True, capture_output=True, timeout=120
                )
                break
            except subprocess.CalledProcessError:
                if i == len(FLAGS) - 1:
                    raise
        os.chmod(tmp, 0o700)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_or_reuse(compiler: str) -> Path | None:
    """The cached library for this source, flags, CPU and compiler: built once, verified to
    be ours before every load; a failed build is remembered (a `.failed` file) instead of
    being retried by every process."""
    folder = _private_folder()
    if folder is None:
        return None
    key_text = SOURCE.read_bytes() + repr(FLAGS).encode() + cpu_id().encode() + _compiler_id(compiler).encode()
    target = folder / f"topk-{hashlib.sha256(key_text).hexdigest()[:16]}.so"
    failed = target.with_suffix(".failed")
    if failed.exists():
        log.info(
            "the native TopK kernels failed to build here before (%s): using the torch kernels; "
            "delete that file to try again",
            failed,
        )
        return None
    try:
        if not target.exists():
            _compile(compiler, target)
    except (OSError, subprocess.SubprocessError) as err:
        detail = (getattr(err, "stderr", b"") or b"").decode(errors="replace")[:300]
        log.warning(
            "could not build the native TopK kernels (%s%s): using the slower torch kernels",
            err,
            f": {detail}" if detail else "",
        )
        try:
            failed.write_text(f"{err}\n{detail}\n")
        except OSError:
            pass
        return None
    if not _private(target):
        log.warning("%s is owned by another user or writable by others: not loading it", target)
        return None
    return target
