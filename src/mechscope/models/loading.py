"""`load(name)`: a hub id, a local Hugging Face folder or `zoo:NAME` -> `Model`.

Nothing is downloaded when `HF_HUB_OFFLINE` is set or the hub cannot be reached;
a model that is not on this machine then fails at once with a one-line error.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import MechscopeError
from ..finite import warn_nonfinite_parameters
from ..folders import recover_folder
from ..zoo.storage import is_module_folder, load_module_folder
from .auto import is_causal_lm
from .families import adapter_for, check_supported
from .memory import check_fits

log = logging.getLogger(__name__)
HUB_HOST = "huggingface.co"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if a TCP connection to the hub opens within `timeout` (DNS included)."""
    result = []

    def probe():
        try:
            socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def resolve_source(name: str) -> tuple[str, bool]:
    """Where to load `name` from, and whether that is a local folder."""
    if name.startswith("zoo:"):
        from ..zoo import zoo_path

        return str(zoo_path(name[4:].partition("@")[0])), True  # NAME@STEP: a snapshot, its config beside it
    path = recover_folder(Path(name).expanduser())
    if path.is_dir():
        return str(path), True
    if name.startswith((".", "/", "~")) or path.suffix:
        raise MechscopeError(
            f"no model folder at '{name}': give a folder holding config.json and weights, a hub id, or zoo:NAME"
        )
    return name, False


def _config(source: str, local: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, local_files_only=True), True
    except (OSError, ValueError) as err:
        if local:
            raise MechscopeError(
                f"'{source}' is not a Hugging Face model folder ({err.__class__.__name__}: no usable config.json)"
            ) from None
    if hub_offline() or not hub_reachable():
        raise MechscopeError(
            f"model '{source}' is not on this machine and the hub is offline: download it once where the hub is "
            f"reachable (`hf download {source}`) or pass a local folder / zoo:NAME"
        )
    try:
        return AutoConfig.from_pretrained(source), False
    except OSError as err:
        raise MechscopeError(f"could not find model '{source}' on the hub: {str(err).splitlines()[0]}") from None


def refuse_pickle_only(folder: Path) -> None:
    """No pickle anywhere: a folder whose weights are only PyTorch pickles (pytorch_model.bin,
    its shards) fails here, before anything could unpickle them."""
    pickles = sorted(p.name for p in folder.glob("*.bin") if p.name.startswith("pytorch_model"))
    if pickles and not any(folder.glob("*.safetensors")):
        raise MechscopeError(
            f"{folder} holds only pickle weights ({', '.join(pickles[:3])}{', ...' if len(pickles) > 3 else ''}); "
            "mechscope loads safetensors only: convert them once where you trust the file, e.g. "
            "transformers' AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT), and load OUT"
        )


def _model_class(config):
    import transformers

    # `architectures` is read from a file: it may only pick a transformers model class of this model_type
    for arch in config.architectures or []:
        cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
        if (
            isinstance(cls, type)
            and issubclass(cls, transformers.PreTrainedModel)
            and getattr(cls.config_class, "model_type", None) == config.model_type
        ):
            return cls
    if config.model_type == "bert":
        return transformers.AutoModel
    return transformers.AutoModelForCausalLM


@contextmanager
def _quiet_transformers():
    """No weight-loading progress bar unless the caller asked for INFO logs."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if was_on and not log.isEnabledFor(logging.INFO):
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


DEVICE_ENV, DTYPE_ENV = "MECHSCOPE_DEVICE", "MECHSCOPE_DTYPE"
"""Defaults for `load` when its device / dtype are not given (the CLI's --device / --dtype set them)."""
DTYPES = ("float32", "bfloat16", "float16", "float64")


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """`device`, else $MECHSCOPE_DEVICE; 'auto' is this process's GPU (cuda:$LOCAL_RANK under
    torchrun) when torch sees one, else the CPU. A device that does not exist fails here."""
    device = device if device is not None else os.environ.get(DEVICE_ENV) or None
    if device is None:
        return None
    if str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise MechscopeError(f"unknown device {str(device)!r}: use cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise MechscopeError(
            f"device {str(device)!r} was asked for but torch sees {seen} GPU(s): "
            "use --device cpu (or auto), or install a CUDA build of torch"
        )
    return device


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """`dtype`, else $MECHSCOPE_DTYPE; by name (float32, bfloat16, float16, float64) or a torch.dtype."""
    dtype = dtype if dtype is not None else os.environ.get(DTYPE_ENV) or None
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise MechscopeError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def load(
    name: str,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
):
    """Load a model by hub id, local folder or `zoo:NAME`, ready for recording and editing.
    dtype / device default to $MECHSCOPE_DTYPE / $MECHSCOPE_DEVICE, else float32 on the CPU.
    device_map ("auto", or Hugging Face's module -> device dict) spreads a large model over
    the GPUs and the CPU (it needs the accelerate package); recorded values then stay on the
    device of their module unless `run(..., cache_device=...)` gathers them. A model whose
    weights would not fit in the free memory of its device is refused before loading."""
    from transformers import AutoTokenizer

    from ..model import Model
    from ..zoo import snapshot_file, transformer  # noqa: F401  transformer registers the zoo's architecture
    from .auto_model import auto_model

    dtype, device = resolve_dtype(dtype), resolve_device(device)

    source, local = resolve_source(name)
    if local and is_module_folder(Path(source)):
        from ..module_model import ModuleModel

        module = load_module_folder(Path(source))
        module = module if dtype is None else module.to(dtype)
        warn_nonfinite_parameters(module, name)
        return ModuleModel(module if device is None else module.to(device), name=name)
    config, cached = _config(source, local)
    automatic = adapter_for(config.model_type) is None and is_causal_lm(config)  # no table: the automatic adapter
    if not automatic:
        check_supported(config)
    if local:
        refuse_pickle_only(Path(source))
    log.info("loading %s (%s) from %s", name, config.model_type, source)
    kwargs: dict = {"local_files_only": cached}
    if device_map is not None:
        if device is not None:
            raise MechscopeError("give device or device_map, not both: device_map places every module itself")
        if importlib.util.find_spec("accelerate") is None:
            raise MechscopeError("device_map needs the accelerate package: pip install accelerate")
        kwargs["device_map"] = device_map
    else:
        check_fits(name, _model_class(config), config, dtype or torch.float32, device, source if local else None)
    try:
        snapshot = snapshot_file(name[4:]) if name.startswith("zoo:") else None
        with _quiet_transformers():
            hf = _model_class(config).from_pretrained(source, dtype=dtype or torch.float32, **kwargs)
        if snapshot is not None:
            hf.load_state_dict(load_file(snapshot))
    except (SafetensorError, OSError, RuntimeError) as err:
        if not local:
            raise
        raise MechscopeError(
            f"the weights in {source} could not be read ({str(err).splitlines()[0]}): the file is "
            "corrupt, truncated or for another architecture; restore it or retrain (`mechscope zoo train NAME`)"
        ) from None
    if device is not None and device_map is None:
        hf = hf.to(device)
    warn_nonfinite_parameters(hf, name)  # a warning, not a refusal: inspecting a broken model finds the damage
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError):
        log.info("%s has no tokenizer; pass token ids instead of text", name)
        tokenizer = None
    return auto_model(hf, tokenizer, name=name) if automatic else Model(hf, tokenizer, name=name)
