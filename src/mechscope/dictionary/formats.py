"""Reading and writing published dictionary layouts.

- mechscope: cfg.json (format "mechscope.dictionary", every CoderConfig field) + sae.safetensors.
- SAELens: cfg.json (architecture "standard" | "topk" | "gated" | "jumprelu", d_in, d_sae,
  hook_name, model_name, dtype, apply_b_dec_to_input, normalize_activations, topk's k in
  activation_fn_kwargs or top level; newer versions repeat names under "metadata") +
  sae_weights.safetensors (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec; threshold
  for jumprelu; b_gate, b_mag, r_mag instead of b_enc for gated).
- sparsify: a folder (or one per hookpoint) with cfg.json (expansion_factor, num_latents, k,
  normalize_decoder, multi_topk, ...) + sae.safetensors (encoder.weight [d_sae, d_in],
  encoder.bias, W_dec [d_sae, d_in], b_dec [d_in]); encodes topk(relu((x - b_dec) W_enc^T + b)).

File names, the sparsify weights/cfg keys and SAELens's dtype strings were checked against
the projects' sources; SAELens topk `rescale_acts_by_decoder_norm` is folded from its
documented meaning, not tested against SAELens itself. External layouts have no input scale: writing folds
`norm_scale` s into the weights (W_enc * s, W_dec / s, b_dec / s), so the map on raw
activations and the latents are unchanged. BatchTopK and Matryoshka are written as SAELens
jumprelu with every threshold at the learned inference threshold — the same inference map.
A coder with input_norm "layer_norm" is SAELens's normalize_activations "layer_norm" (the same
per-input standardisation, std with Bessel's correction, eps 1e-5, outputs times std plus mean);
its norm_scale is unused, so nothing is folded. sparsify has no such field, and mechscope only
reads that layout, so a sparsify folder never yields one.

Reading validates once, here: cfg.json must be a JSON object whose sizes (d_in, d_sae, k,
num_latents, ...) are positive integers; every tensor must have the shape those sizes imply
(the error names the tensor, the expected and the found shape); weights holding NaN or inf
are refused (`base.load_weights`), as is a size that cannot be allocated (`memory.check_memory`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import io
from ..errors import MechscopeError
from .base import FORMAT, WEIGHTS_FILE, SparseCoder, build, load_weights
from .config import CoderConfig

log = logging.getLogger(__name__)

SAELENS_WEIGHTS = "sae_weights.safetensors"
_TO_SAELENS = {
    "relu": "standard",
    "topk": "topk",
    "gated": "gated",
    "jumprelu": "jumprelu",
    "batchtopk": "jumprelu",
    "matryoshka": "jumprelu",
}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _read_json(path: Path) -> dict:
    return io.read_json(path)  # one line for unreadable, binary, malformed or non-object files


def _int_field(cfg: dict, key: str, path: Path, value=None) -> int | None:
    """cfg[key] (or `value`) as a positive integer, None when absent; anything else fails in one line."""
    value = cfg.get(key) if value is None else value
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MechscopeError(
            f"{path}: {key} must be a positive integer, got {value!r} ({type(value).__name__}): "
            "correct the file or export the dictionary again"
        )
    return value


def _check_shapes(path: Path, tensors: dict[str, Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    """Each named tensor has the shape the config implies (names the first that does not)."""
    for name, shape in expected.items():
        found = tuple(tensors[name].shape)
        if found != shape:
            raise MechscopeError(
                f"{path}: tensor {name} has shape {list(found)}, but cfg.json implies {list(shape)}: "
                "the weights and cfg.json belong to different dictionaries; restore the folder"
            )


def detect(folder: str | Path) -> str:
    """'mechscope', 'saelens' or 'sparsify' from the files in a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MechscopeError(f"{folder} is not a folder: a dictionary is a folder with cfg.json and safetensors")
    if (folder / SAELENS_WEIGHTS).exists():
        return "saelens"
    if (folder / WEIGHTS_FILE).exists():
        cfg = _read_json(folder / "cfg.json") if (folder / "cfg.json").exists() else {}
        return "mechscope" if cfg.get("format") == FORMAT else "sparsify"
    if _hookpoints(folder):
        return "sparsify"
    raise MechscopeError(
        f"{folder} holds no dictionary: expected {WEIGHTS_FILE} (mechscope, sparsify), "
        f"{SAELENS_WEIGHTS} (SAELens) or sparsify hookpoint subfolders"
    )


def read(folder: str | Path, *, hookpoint: str | None = None) -> SparseCoder:
    """Load a dictionary in any supported layout (mechscope, SAELens, sparsify)."""
    kind = detect(folder)
    if kind == "mechscope":
        return SparseCoder.load(folder)
    try:
        return read_saelens(folder) if kind == "saelens" else read_sparsify(folder, hookpoint=hookpoint)
    except KeyError as err:
        raise MechscopeError(
            f"{folder} reads as a {kind} dictionary but its files lack {err}: they are incomplete or of another layout"
        ) from None


# SAELens


def _saelens_field(cfg: dict, key: str, default=None):
    return cfg.get(key, (cfg.get("metadata") or {}).get(key, default))


def read_saelens(folder: str | Path) -> SparseCoder:
    folder = Path(folder)
    cfg = _read_json(folder / "cfg.json")
    w = io.read_tensors(folder / SAELENS_WEIGHTS, "SAELens weights")
    arch = cfg.get("architecture", "standard")
    norm = _saelens_field(cfg, "normalize_activations", "none") or "none"
    if norm not in ("none", "expected_average_only_in", "layer_norm"):
        raise MechscopeError(
            f"{folder}: normalize_activations={norm!r} is not supported: mechscope dictionaries "
            "read 'none', 'layer_norm' and 'expected_average_only_in' (with the factor folded in)"
        )
    if norm == "expected_average_only_in":
        log.warning(
            "%s: normalize_activations='expected_average_only_in' without a stored factor; "
            "assuming it was folded into the weights",
            folder,
        )
    d_in, d_sae = _saelens_dims(folder, cfg, w, arch)
    kwargs: dict[str, Any] = dict(
        d_in=d_in,
        d_sae=d_sae,
        dtype=_dtype_name(w["W_enc"].dtype),
        input_norm="layer_norm" if norm == "layer_norm" else "none",
        hook_name=_saelens_str(cfg, "hook_name", folder),
        model_name=_saelens_str(cfg, "model_name", folder),
    )
    if arch == "standard":
        coder_cfg = CoderConfig("relu", **kwargs)
    elif arch == "topk":
        fn_kwargs = cfg.get("activation_fn_kwargs") or {}
        if not isinstance(fn_kwargs, dict):
            raise MechscopeError(f"{folder}/cfg.json: activation_fn_kwargs must be an object, got {fn_kwargs!r}")
        k = _int_field(cfg, "k", folder / "cfg.json", fn_kwargs.get("k", cfg.get("k")))
        if k is None:
            raise MechscopeError(f"{folder}/cfg.json: a topk SAE needs k (activation_fn_kwargs.k or k)")
        coder_cfg = CoderConfig("topk", k=k, **kwargs)
    elif arch in ("gated", "jumprelu"):
        coder_cfg = CoderConfig(arch, **kwargs)
    else:
        raise MechscopeError(
            f"{folder}: SAELens architecture {arch!r} is not supported (standard, topk, gated, jumprelu)"
        )
    state = {"W_enc": w["W_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    if arch == "gated":
        state.update(b_enc=w["b_gate"], b_mag=w["b_mag"], r_mag=w["r_mag"])
    else:
        state["b_enc"] = w["b_enc"]
    if arch == "jumprelu":
        state["log_threshold"] = w["threshold"].float().clamp_min(1e-12).log().to(w["threshold"].dtype)
    if not _saelens_field(cfg, "apply_b_dec_to_input", True):
        _fold_b_dec_into_encoder(state, arch)
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # latents are pre * |W_dec_i| (selected on that), decoded as (acts / |W_dec_i|) W_dec:
        # the same map with encoder columns times the norms and unit decoder rows
        norms = state["W_dec"].float().norm(dim=-1)
        state["W_enc"] = (state["W_enc"].float() * norms).to(w["W_enc"].dtype)
        state["b_enc"] = (state["b_enc"].float() * norms).to(w["b_enc"].dtype)
        state["W_dec"] = (state["W_dec"].float() / norms[:, None]).to(w["W_dec"].dtype)
    return load_weights(build(coder_cfg), state, folder / SAELENS_WEIGHTS).eval()


def _saelens_str(cfg: dict, key: str, folder: Path) -> str:
    value = _saelens_field(cfg, key, "") or ""
    if not isinstance(value, str):
        raise MechscopeError(f"{folder}/cfg.json: {key} must be a string, got {value!r}")
    return value


def _saelens_dims(folder: Path, cfg: dict, w: dict[str, Tensor], arch: str) -> tuple[int, int]:
    """(d_in, d_sae) from cfg.json where it gives them, else from W_enc; every tensor's shape checked."""
    if "W_enc" in w and w["W_enc"].dim() != 2:
        raise MechscopeError(f"{folder / SAELENS_WEIGHTS}: W_enc has shape {list(w['W_enc'].shape)}, not [d_in, d_sae]")
    shape = tuple(w["W_enc"].shape)
    d_in = _int_field(cfg, "d_in", folder / "cfg.json", _saelens_field(cfg, "d_in")) or shape[0]
    d_sae = _int_field(cfg, "d_sae", folder / "cfg.json", _saelens_field(cfg, "d_sae")) or shape[1]
    latent = (
        ("b_gate", "b_mag", "r_mag")
        if arch == "gated"
        else ("b_enc", "threshold")
        if arch == "jumprelu"
        else ("b_enc",)
    )
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,), **{n: (d_sae,) for n in latent}}
    _check_shapes(folder / SAELENS_WEIGHTS, w, expected)
    return d_in, d_sae


def _fold_b_dec_into_encoder(state: dict, arch: str) -> None:
    """Our encoders read x - b_dec; an SAE that reads x directly gets b_enc += b_dec W_enc."""
    shift = state["b_dec"].double() @ state["W_enc"].double()
    state["b_enc"] = (state["b_enc"].double() + shift).to(state["b_enc"].dtype)
    if arch == "gated":
        state["b_mag"] = (state["b_mag"].double() + shift * state["r_mag"].double().exp()).to(state["b_mag"].dtype)


def write_saelens(coder: SparseCoder, folder: str | Path) -> Path:
    """Write the SAELens layout (norm_scale folded into the weights; input_norm as normalize_activations)."""
    arch = coder.cfg.arch
    if getattr(coder.cfg, "transcoder", False) or coder.cfg.blocks:
        raise MechscopeError(
            "SAELens' layout holds single-site autoencoders only: keep transcoders and crosscoders "
            "in the mechscope layout (SparseCoder.save)"
        )
    if arch not in _TO_SAELENS:
        raise MechscopeError(f"SAELens has no {arch} architecture: save it in the mechscope layout instead")
    if arch in ("batchtopk", "matryoshka") and float(_threshold(coder)) < 0:
        raise MechscopeError(f"this {arch} dictionary has no inference threshold yet (train it first)")
    c = coder.fold_norm_scale() if coder.cfg.norm_scale != 1.0 else coder
    p = {k: v.detach() for k, v in c.state_dict().items()}
    tensors = {"W_enc": p["W_enc"], "W_dec": p["W_dec"], "b_dec": p["b_dec"]}
    if arch == "gated":
        tensors.update(b_gate=p["b_enc"], b_mag=p["b_mag"], r_mag=p["r_mag"])
    else:
        tensors["b_enc"] = p["b_enc"]
    if arch == "jumprelu":
        tensors["threshold"] = _threshold(c).detach()
    elif arch in ("batchtopk", "matryoshka"):
        tensors["threshold"] = torch.full((c.cfg.d_sae,), float(_threshold(c)), dtype=p["W_enc"].dtype)
    cfg = {
        "architecture": _TO_SAELENS[arch],
        "d_in": c.cfg.d_in,
        "d_sae": c.cfg.d_sae,
        "dtype": _dtype_name(p["W_enc"].dtype),
        "model_name": c.cfg.model_name,
        "hook_name": c.cfg.hook_name,
        "hook_layer": _layer(c.cfg.hook_name),
        "hook_head_index": None,
        "apply_b_dec_to_input": True,
        "normalize_activations": c.cfg.input_norm,
        "activation_fn_str": "topk" if arch == "topk" else "relu",
        "activation_fn_kwargs": {"k": c.cfg.k} if arch == "topk" else {},
        "device": "cpu",
        "finetuning_scaling_factor": False,
        "prepend_bos": True,
    }
    if arch == "topk":
        cfg["k"] = c.cfg.k
    folder = Path(folder)
    io.write_tensors(folder / SAELENS_WEIGHTS, tensors)
    io.write_json(folder / "cfg.json", cfg)
    return folder


def _layer(hook_name: str) -> int | None:
    m = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(m.group(1)) if m else None


# sparsify


def _hookpoints(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / WEIGHTS_FILE).exists())


def _site_of(hookpoint: str) -> str:
    """sparsify hooks a layer module's output: layers.N (any prefix) is blocks.N.hook_resid_post."""
    m = re.fullmatch(r"(?:.*\.)?(?:layers|h|layer)\.(\d+)", hookpoint)
    return f"blocks.{m.group(1)}.hook_resid_post" if m else ""


def read_sparsify(folder: str | Path, *, hookpoint: str | None = None) -> SparseCoder:
    """A sparsify TopK SAE folder, or one hookpoint of a folder of them."""
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).exists():
        points = _hookpoints(folder)
        if hookpoint is None and len(points) != 1:
            raise MechscopeError(
                f"{folder} holds dictionaries for {len(points)} hookpoints ({', '.join(points)}): "
                "choose one with hookpoint="
            )
        hookpoint = hookpoint or points[0]
        if hookpoint not in points:
            raise MechscopeError(f"{folder} has no hookpoint {hookpoint!r}; it has {', '.join(points)}")
        folder = folder / hookpoint
    cfg = _read_json(folder / "cfg.json")
    for flag in ("skip_connection", "transcode"):
        if cfg.get(flag):
            raise MechscopeError(f"{folder}: sparsify {flag}=true is not supported yet")
    if cfg.get("activation", "topk") != "topk":
        raise MechscopeError(f"{folder}: sparsify activation {cfg['activation']!r} is not supported (only topk)")
    w = io.read_tensors(folder / WEIGHTS_FILE, "sparsify weights")
    d_in, d_sae = _sparsify_dims(folder, cfg, w)
    name = hookpoint or folder.name
    model_name = cfg.get("model", "") or ""
    if not isinstance(model_name, str):
        raise MechscopeError(f"{folder}/cfg.json: model must be a string, got {model_name!r}")
    k = _int_field(cfg, "k", folder / "cfg.json")
    if k is None:
        raise MechscopeError(f"{folder}/cfg.json lacks k (active latents per input): it is not a sparsify TopK SAE")
    coder = build(
        CoderConfig(
            "topk",
            d_in=d_in,
            d_sae=d_sae,
            k=k,
            dtype=_dtype_name(w["W_dec"].dtype),
            hook_name=_site_of(name),
            model_name=model_name,
        )
    )
    state = {
        "W_enc": w["encoder.weight"].T.contiguous(),
        "b_enc": w["encoder.bias"],
        "W_dec": w["W_dec"],
        "b_dec": w["b_dec"],
    }
    return load_weights(coder, state, folder / WEIGHTS_FILE).eval()


def _sparsify_dims(folder: Path, cfg: dict, w: dict[str, Tensor]) -> tuple[int, int]:
    """(d_in, d_sae) from cfg.json (d_in; num_latents, else expansion_factor * d_in) where it gives
    them, else from encoder.weight; every tensor's shape checked."""
    if w["encoder.weight"].dim() != 2:
        raise MechscopeError(
            f"{folder / WEIGHTS_FILE}: encoder.weight has shape {list(w['encoder.weight'].shape)}, not [d_sae, d_in]"
        )
    shape = tuple(w["encoder.weight"].shape)
    path = folder / "cfg.json"
    d_in = _int_field(cfg, "d_in", path) or shape[1]
    expansion = _int_field(cfg, "expansion_factor", path)
    d_sae = _int_field(cfg, "num_latents", path) if cfg.get("num_latents") else None
    d_sae = d_sae or (expansion * d_in if expansion else shape[0])
    _check_shapes(
        folder / WEIGHTS_FILE,
        w,
        {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)},
    )
    return d_in, d_sae


def convert(src: str | Path, dst: str | Path, *, to: str = "mechscope", hookpoint: str | None = None) -> Path:
    """Read a dictionary in any layout and write it as `to` ('mechscope' or 'saelens')."""
    coder = read(src, hookpoint=hookpoint)
    if to == "mechscope":
        return coder.save(dst)
    if to == "saelens":
        return write_saelens(coder, dst)
    raise MechscopeError(f"cannot convert to {to!r}: choose 'mechscope' or 'saelens'")


def _threshold(coder: SparseCoder) -> Tensor:
    """The threshold parameter or buffer of a JumpReLU / BatchTopK / Matryoshka coder."""
    return getattr(coder, "threshold")
