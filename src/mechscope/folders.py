"""Whole folders replaced atomically: at every instant a complete folder (the old one or
the new one) is at the path, even when the process is killed mid-way.

A folder is built in a temporary sibling (`staging_folder`), then `replace_folder` moves
the old one aside, renames the new one in and deletes the old one. A kill between the two
renames leaves only the aside copy; `recover_folder` (called before every read and write
of such a folder) puts it back, and removes what a killed writer left behind.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

_STAGING, _ASIDE = "tmp", "old"


def _sibling(path: Path, kind: str, pid: int) -> Path:
    return path.with_name(f".{path.name}.{kind}-{pid}")


def _leftovers(path: Path, kind: str) -> list[Path]:
    """Siblings `.NAME.KIND-PID` whose writer process is gone."""
    prefix = f".{path.name}.{kind}-"
    if not path.parent.is_dir():
        return []
    found = []
    for entry in path.parent.iterdir():
        pid = entry.name[len(prefix) :]
        if entry.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            found.append(entry)
    return sorted(found, key=lambda p: p.stat().st_mtime)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process's own leftovers are from an earlier, failed attempt
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_folder(path: str | Path) -> Path:
    """Undo a replacement that a kill interrupted: put a moved-aside folder back where the
    path is empty, and delete staging and aside folders of writers that no longer run."""
    path = Path(path)
    try:
        asides = _leftovers(path, _ASIDE)
        if asides and not path.exists():
            os.replace(asides.pop(), path)  # the newest complete copy goes back in place
            log.warning("%s: put back the folder that an interrupted replacement had moved aside", path)
        for leftover in asides + _leftovers(path, _STAGING):
            shutil.rmtree(leftover, ignore_errors=True)
    except OSError as err:  # a read-only place: readers still find what is there
        log.debug("could not tidy %s: %s", path, err)
    return path


def staging_folder(path: str | Path) -> Path:
    """An empty folder beside `path` to build its replacement in (removed by `recover_folder`
    if this process dies before `replace_folder`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(path)
    staging = _sibling(path, _STAGING, os.getpid())
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def replace_folder(staging: str | Path, path: str | Path) -> Path:
    """Put the finished `staging` folder at `path`: old aside, new in, old deleted. The
    files are synced first so that a crash after the rename cannot leave empty files."""
    staging, path = Path(staging), Path(path)
    _sync_tree(staging)
    aside = _sibling(path, _ASIDE, os.getpid())
    if path.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
    os.replace(staging, path)
    _sync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)
    return path


def _sync_tree(folder: Path) -> None:
    for entry in folder.rglob("*"):
        if entry.is_file():
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _sync_dir(folder)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
