"""What every method's result object shares: `save()`/`load()` as a folder (cfg.json with
the plain fields + tensors.safetensors), read and written through `mechscope.io`, and the
optional pandas that `to_frame()` needs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from .errors import MechscopeError
from .io import read_json, read_tensors, write_json, write_tensors


def pandas():
    """The pandas module, or a one-line error saying how to install it."""
    try:
        import pandas
    except ImportError:
        raise MechscopeError("to_frame() needs pandas, which is not installed: `pip install pandas`") from None
    return pandas


class Saveable:
    """Results saved as a folder: cfg.json (the plain fields) + tensors.safetensors.
    Mixed into a dataclass that names itself with `KIND`."""

    KIND: ClassVar[str] = ""
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # set by @dataclass on the subclass

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        tensors = {k: v for k, v in values.items() if isinstance(v, Tensor)}
        cfg = {"kind": self.KIND, **{k: v for k, v in values.items() if not isinstance(v, Tensor)}}
        write_tensors(path / "tensors.safetensors", tensors)
        write_json(path / "cfg.json", cfg)  # written last: its presence marks a complete folder
        return path

    @classmethod
    def load(cls, path: str | Path) -> Any:
        """The result saved at `path`; a missing, truncated or corrupt folder fails in one line."""
        path = Path(path)
        if not (path / "cfg.json").is_file() or not (path / "tensors.safetensors").is_file():
            raise MechscopeError(
                f"no saved {cls.KIND} at '{path}': expected a folder with cfg.json and tensors.safetensors"
            )
        cfg = read_json(path / "cfg.json")
        kind = cfg.pop("kind", None)
        if kind != cls.KIND:
            raise MechscopeError(f"'{path}' holds a saved {kind or 'something else'!r}, not a {cls.KIND}")
        names = {f.name for f in dataclasses.fields(cls)}
        tensors = read_tensors(path / "tensors.safetensors", what=f"saved {cls.KIND} tensors")
        values = {**{k: v for k, v in cfg.items() if k in names}, **tensors}
        missing = names - set(values)
        for name in missing:  # optional tensors that were None when saved
            values[name] = None
        return cls(**values)
