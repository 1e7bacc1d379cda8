"""Small helpers shared by the structure results: figures, tables, JSON files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MechscopeError
from ..io import write_json


def figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kwargs):
    """A matplotlib Figure that belongs to no pyplot state (safe in libraries and threads)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kwargs)


def plain(value: Any) -> Any:
    """JSON-ready copy: arrays and tensors become lists, numpy scalars Python numbers."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def save_json(path, data: dict) -> Path:
    """Atomic JSON (NaN written as NaN, which `json.loads` reads back)."""
    return write_json(Path(path), plain(data))


def load_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MechscopeError(f"no saved result at {path}: pass the file written by .save()")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MechscopeError(
            f"{path} is not a saved result ({err.msg} at line {err.lineno}); it may be truncated"
        ) from None


def frame(records: list[dict]):
    """A pandas DataFrame of `records` (pandas is optional: `pip install pandas`)."""
    try:
        import pandas as pd
    except ImportError:
        raise MechscopeError(
            "to_frame() needs pandas, which is not installed: `pip install pandas`, "
            "or use to_records() for a list of dicts"
        ) from None
    return pd.DataFrame.from_records(records)


def fmt(value: float, digits: int = 3) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def table(records: list[dict], columns: list[str]) -> str:
    """A plain-text table (for the CLI)."""
    rows = [[fmt(r.get(c, "")) for c in columns] for r in records]
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
