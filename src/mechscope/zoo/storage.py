"""Zoo folders for models that are not Hugging Face transformers (toy models, CNNs):
`cfg.json` names a registered class and its constructor arguments, `model.safetensors`
holds the weights. Written atomically; loaded strictly (a missing, extra or truncated
tensor is an error, never a half-loaded model).

File content is data, never code: `cfg.json`'s `"class"` is looked up in `MODULE_CLASSES`,
a table that code fills with `register_module_class` (the zoo's own modules, or a user's
script for its own classes). Nothing is imported or called by a name read from a file,
and the arguments are checked against the class's annotated signature before it is built.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import types
import typing
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import MechscopeError
from ..folders import recover_folder, replace_folder, staging_folder

MODULE_CLASSES: dict[str, type[nn.Module]] = {}
"""short name -> module class that a folder's cfg.json may name."""

MAX_PARAMETERS = 2_000_000_000
"""A folder asking for more parameters than this is refused before anything is allocated."""


def register_module_class(name: str):
    """Class decorator: let folders whose cfg.json says `"class": name` build this class.
    Its `__init__` arguments must be annotated (int, float, bool, str, lists and dicts of
    those): they are the only values a folder can pass."""

    def register(cls: type[nn.Module]) -> type[nn.Module]:
        if MODULE_CLASSES.get(name, cls) is not cls:
            raise MechscopeError(f"module class name {name!r} is already registered for {MODULE_CLASSES[name]!r}")
        MODULE_CLASSES[name] = cls
        return cls

    return register


def _registered() -> dict[str, type[nn.Module]]:
    from . import digits, superposition, vit_digits  # noqa: F401  their classes register themselves

    return MODULE_CLASSES


def _class_name(cls: type) -> str:
    for name, known in _registered().items():
        if known is cls:
            return name
    raise MechscopeError(
        f"{cls.__qualname__} is not a registered module class: decorate it with "
        "@mechscope.zoo.storage.register_module_class('NAME') before saving it"
    )


def save_module_folder(
    module: nn.Module, kwargs: dict, out_dir: Path, extra_files: dict[str, str] | None = None
) -> Path:
    """Write cfg.json + model.safetensors (+ extra text files) into out_dir, atomically:
    the folder at `out_dir` is at every instant either the old one or the new one."""
    out_dir = Path(out_dir)
    name = _class_name(type(module))
    _check_kwargs(type(module), name, kwargs, out_dir)
    tmp = staging_folder(out_dir)
    (tmp / "cfg.json").write_text(json.dumps({"class": name, "kwargs": kwargs}, indent=2))
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, tmp / "model.safetensors")
    for file_name, text in (extra_files or {}).items():
        (tmp / file_name).write_text(text)
    umask = os.umask(0)
    os.umask(umask)
    for path in [tmp, *tmp.iterdir()]:  # give the folder normal permissions
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
    return replace_folder(tmp, out_dir)


def is_module_folder(path: Path) -> bool:
    path = recover_folder(path)
    return (path / "cfg.json").is_file() and not (path / "config.json").is_file()


def _lookup(path: Path, named: object) -> tuple[str, type[nn.Module]]:
    if not isinstance(named, str):
        raise MechscopeError(
            f"'{path}' is not a model folder: its cfg.json names no model class (a dictionary, "
            "cache or saved result?); give a Hugging Face folder (config.json), a hub id or zoo:NAME"
        )
    classes = _registered()
    if named in classes:
        return named, classes[named]
    # folders written before the registry named `module:qualname`; match it as text, import nothing
    for name, cls in classes.items():
        if named == f"{cls.__module__}:{cls.__qualname__}":
            return name, cls
    raise MechscopeError(
        f"{path}/cfg.json names class {named!r}, which is not a registered model class "
        f"(registered: {', '.join(sorted(classes))}); a folder cannot choose code to run. "
        "Register your own class with @mechscope.zoo.storage.register_module_class"
    )


def _matches(value: object, hint: object) -> bool:
    """Whether a JSON value fits a plain type annotation (bool is not an int here)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    return False  # an annotation this checker does not know: refuse rather than guess


def _check_kwargs(cls: type[typing.Any], name: str, kwargs: object, path: Path) -> None:
    """Refuse arguments the class does not declare, that lack a value, or whose type differs."""
    if not isinstance(kwargs, dict):
        raise MechscopeError(f"{path}/cfg.json: 'kwargs' must be a JSON object of {name}'s arguments")
    params = {p.name: p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"}
    hints = typing.get_type_hints(cls.__init__)
    unknown = sorted(set(kwargs) - set(params))
    missing = sorted(n for n, p in params.items() if p.default is p.empty and n not in kwargs)
    if unknown or missing:
        what = f"unknown argument(s) {', '.join(unknown)}" if unknown else f"missing argument(s) {', '.join(missing)}"
        raise MechscopeError(f"{path}/cfg.json: {what} for {name} (it takes {', '.join(params)})")
    for key, value in kwargs.items():
        if key not in hints or not _matches(value, hints[key]):
            wanted = getattr(hints.get(key), "__name__", str(hints.get(key, "an annotated value")))
            raise MechscopeError(f"{path}/cfg.json: argument {key}={json.dumps(value)[:60]} of {name} must be {wanted}")


def _build(cls: type[nn.Module], name: str, kwargs: dict, path: Path) -> nn.Module:
    """Build on the meta device first (no memory), check the size, then build for real."""
    try:
        with torch.device("meta"):
            n_params = sum(p.numel() for p in cls(**kwargs).parameters())
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise MechscopeError(
            f"{path}/cfg.json: {name} cannot be built from its arguments "
            f"({str(err).splitlines()[0]}): restore the file or train the model again"
        ) from None
    if n_params > MAX_PARAMETERS:
        raise MechscopeError(
            f"{path}/cfg.json asks for a {name} with {n_params:,} parameters "
            f"({n_params * 4 / 2**30:.1f} GiB), over the {MAX_PARAMETERS:,} limit: the file is wrong"
        )
    return cls(**kwargs)


def load_module_folder(path: Path) -> nn.Module:
    """Rebuild the registered class that cfg.json names and load its weights strictly."""
    from ..io import read_json

    path = recover_folder(path)
    cfg = read_json(path / "cfg.json")
    name, cls = _lookup(path, cfg.get("class"))
    kwargs = cfg.get("kwargs", {})
    _check_kwargs(cls, name, kwargs, path)
    module = _build(cls, name, kwargs, path)
    try:
        state = load_file(path / "model.safetensors")
    except (SafetensorError, OSError) as err:
        raise MechscopeError(
            f"weights file {path / 'model.safetensors'} is corrupt or truncated ({err}); "
            "retrain it with `mechscope zoo train NAME` or restore the file"
        ) from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise MechscopeError(f"weights in {path} do not match {name}: {str(err).splitlines()[0]}") from None
    return module.eval()
