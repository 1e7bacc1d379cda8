"""The one configuration every sparse coder (SAE or transcoder) is built from.

Every field is checked when a config is made, whether from code or from a cfg.json
(`from_dict`, which also names missing fields and the file): its type (a bool is not a
number, a string is not a list), finite floats, positive sizes, and an `arch` from the table
below (which `base.build` checks against its registered classes)."""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass

from ..errors import MechscopeError

ARCHITECTURES = ("relu", "topk", "batchtopk", "gated", "jumprelu", "matryoshka", "switch")
CROSSCODERS = ("crosscoder", "weakly_causal_crosscoder")
"""Dictionaries over several sites at once (cfg.blocks names them); see crosscoder.py."""
INPUT_NORMS = ("none", "layer_norm")
"""Per-input normalisations a coder can apply before encoding (`CoderConfig.input_norm`)."""


@dataclass(frozen=True)
class CoderConfig:
    """The whole configuration of one sparse coder (SAE or transcoder): its architecture,
    sizes and losses, and which site of which model it reads.

    Invariants (checked when made, from code or from cfg.json): every field has its type
    (a bool is not a number), floats are finite, sizes positive, `arch` is in ARCHITECTURES
    or CROSSCODERS; frozen: `replace(...)` makes a changed, re-checked copy.

        cfg = CoderConfig(arch="topk", d_in=512, d_sae=4096, k=32, hook_name="blocks.3.hook_resid_post")
        cfg.replace(k=64).to_dict()    # what cfg.json holds
    """

    arch: str
    """Architecture: relu, topk, batchtopk, gated, jumprelu, matryoshka or switch."""
    d_in: int
    """Width of the activation the dictionary reads."""
    d_sae: int
    """Number of latents (dictionary size)."""
    d_out: int | None = None
    """Width of the reconstruction target; None means d_in (an autoencoder); set it for transcoders."""
    k: int = 32
    """Active latents per input (topk, matryoshka and switch per expert; batchtopk on average)."""
    l1_coeff: float = 1e-3
    """relu, gated: weight of the L1 sparsity penalty (times decoder row norms)."""
    l0_coeff: float = 1e-3
    """jumprelu: weight of the L0 sparsity penalty."""
    bandwidth: float = 1e-3
    """jumprelu: width of the rectangle kernel of the straight-through threshold gradient."""
    init_threshold: float = 1e-3
    """jumprelu: initial threshold of every latent (in normalised units)."""
    aux_k: int = 256
    """topk-family: dead latents used by the AuxK loss to reconstruct the residual error."""
    aux_coeff: float = 1 / 32
    """topk-family: weight of the AuxK loss."""
    dead_after: int = 10_000_000
    """Tokens without firing after which a latent counts as dead (the trainer keeps the count)."""
    prefixes: tuple[int, ...] = ()
    """matryoshka: nested dictionary widths, ascending, the last equal to d_sae (empty = just d_sae)."""
    n_experts: int = 8
    """switch: number of expert dictionaries (d_sae is split evenly between them)."""
    balance_coeff: float = 1e-2
    """switch: weight of the load-balancing loss n_experts * sum_i f_i * P_i."""
    threshold_momentum: float = 0.99
    """batchtopk, matryoshka: momentum of the running mean of the inference threshold."""
    hook_name: str = ""
    """Site the dictionary reads (TransformerLens name, e.g. blocks.3.hook_resid_post)."""
    model_name: str = ""
    """Model the dictionary was trained on."""
    norm_scale: float = 1.0
    """Inputs (and targets) are multiplied by this before encoding; outputs divided by it (unused with layer_norm)."""
    input_norm: str = "none"
    """Per-input normalisation: none, or layer_norm: each input is standardised over its features,
    (x - mean) / (std + 1e-5), before encoding, losses are computed in that space and outputs mapped
    back (x_hat * std + mean); SAELens's normalize_activations="layer_norm" (autoencoders only)."""
    dtype: str = "float32"
    """Parameter dtype: float32, bfloat16 or float16."""
    blocks: tuple[str, ...] = ()
    """Crosscoders: the sites (or "model:site" for model diffing) whose equal-width activations are
    concatenated, in this order, into the d_in-wide input; empty for every other coder."""
    target_hook: str = ""
    """Transcoders: the site the output is compared with (e.g. blocks.1.hook_mlp_out); required when d_out is set."""
    skip: bool = False
    """Transcoders: add a learned linear skip connection x W_skip (W_skip [d_in, d_out], zero at init) to the output."""

    def __post_init__(self) -> None:
        _check_types(self)
        if self.arch not in ARCHITECTURES + CROSSCODERS:
            raise MechscopeError(
                f"unknown dictionary architecture '{self.arch}': choose one of {', '.join(ARCHITECTURES + CROSSCODERS)}"
            )
        if bool(self.blocks) != (self.arch in CROSSCODERS):
            raise MechscopeError(
                f"blocks={self.blocks} with arch '{self.arch}': crosscoders ({', '.join(CROSSCODERS)}) "
                "need blocks (the sites they read, in order) and other dictionaries take none"
            )
        _check_ranges(self)
        if self.arch in ("topk", "batchtopk", "matryoshka", "switch") and not 1 <= self.k <= self.d_sae:
            raise MechscopeError(f"k={self.k} must be between 1 and d_sae={self.d_sae}")
        if self.arch == "switch" and self.d_sae % self.n_experts:
            raise MechscopeError(f"switch: d_sae={self.d_sae} must be divisible by n_experts={self.n_experts}")
        if self.arch == "switch" and self.k > self.d_sae // self.n_experts:
            raise MechscopeError(f"switch: k={self.k} exceeds the {self.d_sae // self.n_experts} latents per expert")
        if self.prefixes:
            p = list(self.prefixes)
            if p != sorted(set(p)) or p[-1] != self.d_sae or p[0] < 1:
                raise MechscopeError(
                    f"prefixes {self.prefixes} must be ascending, distinct and end with d_sae={self.d_sae}"
                )
        if self.d_out is not None and (self.d_out < 1 or not self.target_hook):
            raise MechscopeError(
                f"d_out={self.d_out} makes a transcoder: it must be positive and target_hook must name "
                "the site it predicts (e.g. blocks.1.hook_mlp_out)"
            )
        if (self.target_hook or self.skip) and self.d_out is None:
            raise MechscopeError("target_hook and skip are for transcoders: set d_out (the target's width) too")
        if self.input_norm not in INPUT_NORMS:
            raise MechscopeError(f"unknown input_norm '{self.input_norm}': choose one of {', '.join(INPUT_NORMS)}")
        if self.input_norm != "none" and (self.d_out is not None or self.blocks):
            raise MechscopeError(
                f"input_norm='{self.input_norm}' is for single-site autoencoders: transcoders and "
                "crosscoders scale their inputs with norm_scale only; use input_norm='none'"
            )
        if self.input_norm != "none" and self.d_in < 2:
            raise MechscopeError(f"input_norm='{self.input_norm}' standardises over the features: it needs d_in >= 2")
        if self.dtype not in ("float32", "bfloat16", "float16", "float64"):
            raise MechscopeError(f"dtype '{self.dtype}' is not supported: use float32, bfloat16 or float16")

    @property
    def transcoder(self) -> bool:
        """True when the coder predicts another site (d_out set) instead of reconstructing its input."""
        return self.d_out is not None

    @property
    def out_dim(self) -> int:
        """d_out, or d_in for an autoencoder."""
        return self.d_in if self.d_out is None else self.d_out

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["prefixes"] = list(self.prefixes)
        d["blocks"] = list(self.blocks)
        return d

    @classmethod
    def from_dict(cls, data: dict, source: str = "") -> CoderConfig:
        """A config from what a cfg.json holds (unknown keys ignored). A missing required field,
        a value of the wrong type or out of range fails in one line, prefixed with `source`
        (the file it came from) when given."""
        where = f"{source}: " if source else ""
        if not isinstance(data, dict):
            raise MechscopeError(f"{where}a dictionary config is a JSON object, got {type(data).__name__}")
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in data]
        if missing:
            raise MechscopeError(
                f"{where}the dictionary config lacks {', '.join(missing)}: restore the file or "
                "save the dictionary again"
            )
        names = {f.name for f in fields}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except MechscopeError as err:
            if not source:
                raise
            raise MechscopeError(f"{where}{err} (correct the file, or save the dictionary again)") from None

    def replace(self, **changes) -> CoderConfig:
        return dataclasses.replace(self, **changes)


# Field checks: what a config read from a file may hold (a bool is not a number here)

_KINDS = {
    "str": "a string",
    "int": "an integer",
    "int | None": "an integer or null",
    "float": "a number",
    "bool": "true or false",
    "tuple[int, ...]": "a list of integers",
    "tuple[str, ...]": "a list of strings",
}
_POSITIVE = ("d_in", "d_sae", "d_out", "k", "n_experts", "dead_after", "norm_scale", "bandwidth", "init_threshold")
_NON_NEGATIVE = ("aux_k", "l1_coeff", "l0_coeff", "aux_coeff", "balance_coeff")


def _as_int(value):
    if isinstance(value, bool):
        raise TypeError
    return operator.index(value)  # ints and integer scalars (numpy), never floats or strings


def _as_float(value):
    if isinstance(value, (bool, str, bytes)):
        raise TypeError
    try:
        return float(value)  # ints, floats and numeric scalars; NaN and inf are refused by the range checks
    except (TypeError, ValueError):
        raise TypeError from None


def _convert(kind: str, value):
    if kind == "str":
        if not isinstance(value, str):
            raise TypeError
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError
        return value
    if kind == "int":
        return _as_int(value)
    if kind == "int | None":
        return None if value is None else _as_int(value)
    if kind == "float":
        return _as_float(value)
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError
    item = _as_int if kind == "tuple[int, ...]" else lambda v: _convert("str", v)
    return tuple(item(v) for v in value)


def _check_types(cfg: CoderConfig) -> None:
    """Each field has its declared type (ints for floats and lists for tuples are converted)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        try:
            converted = _convert(str(f.type), value)
        except TypeError:
            raise MechscopeError(
                f"{f.name} must be {_KINDS[str(f.type)]}, got {value!r} ({type(value).__name__})"
            ) from None
        if converted is not value:
            object.__setattr__(cfg, f.name, converted)


def _check_ranges(cfg: CoderConfig) -> None:
    for name in (*_POSITIVE, *_NON_NEGATIVE, "threshold_momentum"):
        value = getattr(cfg, name)
        if value is not None and isinstance(value, float) and not math.isfinite(value):
            raise MechscopeError(f"{name} must be a finite number, got {value}")
    bad = [f"{n}={getattr(cfg, n)}" for n in _POSITIVE if getattr(cfg, n) is not None and not getattr(cfg, n) > 0]
    if bad:
        raise MechscopeError(f"{', '.join(bad)}: {'these' if len(bad) > 1 else 'it'} must be positive")
    bad = [f"{n}={getattr(cfg, n)}" for n in _NON_NEGATIVE if not getattr(cfg, n) >= 0]
    if bad:
        raise MechscopeError(f"{', '.join(bad)}: {'these' if len(bad) > 1 else 'it'} must be 0 or more")
    if not 0 <= cfg.threshold_momentum <= 1:
        raise MechscopeError(f"threshold_momentum={cfg.threshold_momentum} must be between 0 and 1")
