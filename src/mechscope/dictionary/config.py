"""The one configuration every sparse coder (SAE or transcoder) is built from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import MechscopeError

ARCHITECTURES = ("relu", "topk", "batchtopk", "gated", "jumprelu", "matryoshka", "switch")
CROSSCODERS = ("crosscoder", "weakly_causal_crosscoder")
"""Dictionaries over several sites at once (cfg.blocks names them); see crosscoder.py."""
INPUT_NORMS = ("none", "layer_norm")
"""Per-input normalisations a coder can apply before encoding (`CoderConfig.input_norm`)."""


@dataclass(frozen=True)
class CoderConfig:
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
        if self.arch not in ARCHITECTURES + CROSSCODERS:
            raise MechscopeError(f"unknown dictionary architecture '{self.arch}': choose one of "
                                 f"{', '.join(ARCHITECTURES + CROSSCODERS)}")
        if bool(self.blocks) != (self.arch in CROSSCODERS):
            raise MechscopeError(f"blocks={self.blocks} with arch '{self.arch}': crosscoders ({', '.join(CROSSCODERS)}) "
                                 "need blocks (the sites they read, in order) and other dictionaries take none")
        if min(self.l1_coeff, self.l0_coeff) < 0:
            raise MechscopeError(f"sparsity penalties must be 0 or more, got l1_coeff={self.l1_coeff}, "
                                 f"l0_coeff={self.l0_coeff}")
        if self.d_in < 1 or self.d_sae < 1:
            raise MechscopeError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        if self.arch in ("topk", "batchtopk", "matryoshka", "switch") and not 1 <= self.k <= self.d_sae:
            raise MechscopeError(f"k={self.k} must be between 1 and d_sae={self.d_sae}")
        if self.arch == "switch" and self.d_sae % self.n_experts:
            raise MechscopeError(f"switch: d_sae={self.d_sae} must be divisible by n_experts={self.n_experts}")
        if self.arch == "switch" and self.k > self.d_sae // self.n_experts:
            raise MechscopeError(f"switch: k={self.k} exceeds the {self.d_sae // self.n_experts} latents per expert")
        if self.prefixes:
            p = list(self.prefixes)
            if p != sorted(set(p)) or p[-1] != self.d_sae or p[0] < 1:
                raise MechscopeError(f"prefixes {self.prefixes} must be ascending, distinct and end with d_sae={self.d_sae}")
        if self.d_out is not None and (self.d_out < 1 or not self.target_hook):
            raise MechscopeError(f"d_out={self.d_out} makes a transcoder: it must be positive and target_hook must name "
                                 "the site it predicts (e.g. blocks.1.hook_mlp_out)")
        if (self.target_hook or self.skip) and self.d_out is None:
            raise MechscopeError("target_hook and skip are for transcoders: set d_out (the target's width) too")
        if self.input_norm not in INPUT_NORMS:
            raise MechscopeError(f"unknown input_norm '{self.input_norm}': choose one of {', '.join(INPUT_NORMS)}")
        if self.input_norm != "none" and (self.d_out is not None or self.blocks):
            raise MechscopeError(f"input_norm='{self.input_norm}' is for single-site autoencoders: transcoders and "
                                 "crosscoders scale their inputs with norm_scale only; use input_norm='none'")
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
    def from_dict(cls, data: dict) -> CoderConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        if "prefixes" in kwargs:
            kwargs["prefixes"] = tuple(kwargs["prefixes"])
        if "blocks" in kwargs:
            kwargs["blocks"] = tuple(kwargs["blocks"])
        return cls(**kwargs)

    def replace(self, **changes) -> CoderConfig:
        return dataclasses.replace(self, **changes)
