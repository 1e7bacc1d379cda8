"""Artefact folders written whole: built in a staging sibling and swapped in, so a killed
save leaves the previous folder (or none), never a half-written one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import MechscopeError
from ..folders import recover_folder, replace_folder, staging_folder
from ..io import make_folder

MARKERS = ("cfg.json", "sweep.json")
"""A folder holding one of these is a saved artefact, which a new save may replace."""


def save_folder(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write an artefact into `path` through `write(folder)`, all or nothing. A folder that
    holds other files (not a saved artefact) is refused rather than replaced."""
    path = Path(path)
    recover_folder(path)
    if path.exists() and (
        not path.is_dir() or (any(path.iterdir()) and not any((path / m).is_file() for m in MARKERS))
    ):
        raise MechscopeError(f"'{path}' holds other files: choose a new or empty folder for the artefact")
    make_folder(path.parent)
    tmp = staging_folder(path)
    write(tmp)
    return replace_folder(tmp, path)
