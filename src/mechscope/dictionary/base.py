"""`SparseCoder`: the shape every dictionary shares, and its save/load.

Orientation follows SAELens: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out],
b_dec [d_out]. For an autoencoder (d_out unset) the encoder reads x - b_dec.

Scale: `cfg.norm_scale` s multiplies inputs and targets before anything else, so the
weights live in the normalised space (mean norm sqrt(d)); `decode` divides by s again,
so `encode`/`decode`/`forward().x_hat` all speak raw activations. Losses are computed in
the normalised space. `save` keeps s in cfg.json (exact resume); `fold_norm_scale()`
returns an equivalent coder with s = 1 (what the external formats store).

Per-input normalisation (`cfg.input_norm = "layer_norm"`, autoencoders only; the BatchTopK
reference's input_unit_norm, SAELens's normalize_activations="layer_norm"): each raw input is
standardised over its features, x_n = (x - mean) / (std + 1e-5) (std with Bessel's correction,
as both compute it), instead of being multiplied by s (norm_scale is then unused). forward
normalises x before `compute`, so every architecture's path (the sparse TopK kernels included)
sees x_n and the loss lives in that space; outputs map back with the input's own statistics,
x_hat = x_hat_n * std + mean. `decode` therefore needs the input the latents came from:
`decode(acts, x=x)`. Decoder rows (`direction`, steering, logit effects) are directions in
the normalised space; a unit change there is a change of `std` in raw units, along the same
direction.

Transcoders (cfg.d_out set, cfg.target_hook the predicted site): the encoder reads x as is
(no b_dec subtraction) and the output is compared with the target. Input and target share
the one factor s (estimated from the input): the map input -> target is then the same
function in raw and normalised units, so a skip connection W_skip [d_in, d_out] (cfg.skip,
zero at init) needs no folding, and `predict(x) = decode(encode(x)) + x W_skip` holds in
raw units.

Training loop contract (S2's trainer):
    out = coder(x, dead_mask=dead)      # CoderOutput
    out.loss.backward()
    coder.before_step()                 # e.g. drop gradient parallel to unit-norm decoder rows
    opt.step(); coder.after_step()      # e.g. renormalise decoder rows
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from .. import io
from ..errors import MechscopeError
from .config import CoderConfig
from .median import geometric_median
from .memory import check_memory, dtype_of

log = logging.getLogger(__name__)

WEIGHTS_FILE = "sae.safetensors"
FORMAT = "mechscope.dictionary"
LN_EPS = 1e-5
"""input_norm 'layer_norm': added to each input's std before dividing (as SAELens and the reference do)."""


class CoderOutput(NamedTuple):
    x_hat: Float[Tensor, "batch d_out"]
    """Reconstruction, in raw activation units."""
    acts: Float[Tensor, "batch d_sae"]
    """Post-activation latents (dense; zeros where inactive)."""
    loss: Float[Tensor, ""]
    """Total training loss."""
    parts: dict[str, Tensor]
    """Named terms (detached): mse, plus l1 / l0 / aux / gate_aux / balance by architecture;
    l0 (mean active latents)."""


_REGISTRY: dict[str, type[SparseCoder]] = {}


def register(cls):
    _REGISTRY[cls.ARCH] = cls
    return cls


class SparseCoder(nn.Module):
    """Base class: linear encoder, architecture-specific activation, linear decoder."""

    ARCH = ""
    UNIT_NORM = False
    """Keep decoder rows at unit norm (and project their gradient) — the topk family."""
    LAZY_ADAM = False
    """Gradient only on latents that fired (or are dead, under AuxK), and before/after_step are
    exactly the unit-norm projection and renormalisation: lazy Adam applies (lazy_adam.py)."""

    def __init__(self, cfg: CoderConfig):
        super().__init__()
        self.cfg = cfg
        dtype = dtype_of(cfg.dtype)
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.out_dim
        W_dec = torch.randn(d_sae, d_out)
        W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True) * self.init_row_norm()
        self.W_dec = nn.Parameter(W_dec.to(dtype))
        W_enc = W_dec.T.clone() if not cfg.transcoder else torch.randn(d_in, d_sae) / d_in**0.5
        self.W_enc = nn.Parameter(W_enc.contiguous().to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=dtype))
        if cfg.skip:  # transcoders: linear skip connection, zero at init (draws no random numbers)
            self.W_skip = nn.Parameter(torch.zeros(d_in, d_out, dtype=dtype))

    def init_row_norm(self) -> float:
        return 1.0

    # The maps

    @property
    def autoencoder(self) -> bool:
        return not self.cfg.transcoder

    def _check(self, x: Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise MechscopeError(
                f"this dictionary reads {self.cfg.d_in}-wide activations but got width {x.shape[-1]}"
                f"{' (site ' + self.cfg.hook_name + ')' if self.cfg.hook_name else ''}"
            )

    def input_stats(self, x: Float[Tensor, "... d_in"]) -> tuple[Tensor, Tensor] | None:
        """(mean, std) of each raw input over its features ([..., 1] each) for input_norm
        'layer_norm'; None otherwise."""
        if self.cfg.input_norm == "none":
            return None
        x = x.to(torch.promote_types(x.dtype, self.W_enc.dtype))
        return x.mean(-1, keepdim=True), x.std(-1, keepdim=True)

    def scaled(self, x: Tensor, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Raw input (or target) -> the normalised space: times norm_scale, or, under layer_norm,
        standardised with `stats` (default: x's own; forward passes the input's for a target)."""
        if self.cfg.input_norm == "layer_norm":
            stats = self.input_stats(x) if stats is None else stats
            assert stats is not None  # input_stats gives them under layer_norm
            mean, std = stats
            return ((x.to(mean.dtype) - mean) / (std + LN_EPS)).to(self.W_enc.dtype)
        x = x.to(self.W_enc.dtype)
        return x * self.cfg.norm_scale if self.cfg.norm_scale != 1.0 else x

    def unscaled(self, y: Tensor, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Normalised output -> raw units: y / norm_scale, or y * std + mean with the input's `stats` (layer_norm)."""
        if self.cfg.input_norm == "layer_norm":
            assert stats is not None, "layer_norm outputs need the input's (mean, std)"  # decode() asks for x
            mean, std = stats
            return y * std.to(y.dtype) + mean.to(y.dtype)
        return y / self.cfg.norm_scale if self.cfg.norm_scale != 1.0 else y

    def centered(self, xs: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_in"]:
        """Normalised input minus the pre-encoder bias (autoencoders only)."""
        return xs - self.b_dec if self.autoencoder else xs

    def pre_acts(self, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, "batch d_sae"]:
        """Encoder pre-activations of raw inputs."""
        self._check(x)
        return self.centered(self.scaled(x)) @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        raise NotImplementedError

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Latent activations of raw inputs (any leading shape)."""
        lead = x.shape[:-1]
        acts = self.activate(self.pre_acts(x.reshape(-1, x.shape[-1])))
        return acts.reshape(*lead, self.cfg.d_sae)

    def decode_scaled(self, acts: Tensor) -> Tensor:
        return acts.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def decode(
        self, acts: Float[Tensor, "... d_sae"], *, x: Float[Tensor, "... d_in"] | None = None
    ) -> Float[Tensor, "... d_out"]:
        """Reconstruction in raw units (normalised reconstruction / norm_scale). `x`: the raw
        input the latents were encoded from (same leading shape); required under input_norm
        'layer_norm', whose outputs are mapped back with each input's mean and std."""
        if x is None and self.cfg.input_norm != "none":
            raise MechscopeError(
                f"this dictionary standardises each input (input_norm='{self.cfg.input_norm}'), so "
                "its reconstruction needs that input's mean and std: call decode(acts, x=x) with "
                "the raw input the latents came from, or predict(x)"
            )
        if x is not None:
            self._check(x)
        return self.unscaled(self.decode_scaled(acts), None if x is None else self.input_stats(x))

    def forward(
        self,
        x: Float[Tensor, "batch d_in"],
        *,
        dead_mask: Bool[Tensor, " d_sae"] | None = None,
        target: Float[Tensor, "batch d_out"] | None = None,
    ) -> CoderOutput:
        self._check(x)
        stats = self.input_stats(x)  # layer_norm: the input's own; a target is standardised with them too
        xs = self.scaled(x, stats)
        ts = xs if target is None else self.scaled(target, stats)
        skip = xs @ self.W_skip if self.cfg.skip else None
        # with a skip the dictionary fits the rest, ts - skip: the same loss as fitting ts with
        # x_hat + skip, and W_skip learns through it; AuxK then targets the remaining error
        x_hat_s, acts, loss, parts = self.compute(xs, ts if skip is None else ts - skip, dead_mask)
        if skip is not None:
            x_hat_s = x_hat_s + skip
        if "l0" not in parts:  # sparse paths report it from their k values, saving a dense pass
            parts["l0"] = (acts.detach() != 0).sum(-1, dtype=torch.float32).mean()
        if "mse" not in parts:  # coders whose loss is the MSE hand it back, saving a pass
            parts["mse"] = mse(x_hat_s, ts)
        parts = {"mse": parts.pop("mse").detach(), **{k: v.detach() for k, v in parts.items()}}
        return CoderOutput(self.unscaled(x_hat_s, stats), acts, loss, parts)

    def predict(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        """The full output on raw inputs: decode(encode(x), x=x), plus x W_skip for a transcoder with a skip."""
        out = self.decode(self.encode(x), x=x)
        if self.cfg.skip:
            out = out + x.to(self.W_skip.dtype) @ self.W_skip
        return out

    def compute(self, xs: Tensor, ts: Tensor, dead_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, dict]:
        """(normalised x_hat, acts, total loss, extra loss terms) for normalised input and target."""
        raise NotImplementedError

    # Training hooks

    def recycle_grads(self) -> None:
        """Call after the optimiser step, before zero_grad: hand gradients that the next
        backward overwrites whole to be written in place (nothing by default; see TopKSAE)."""

    @torch.no_grad()
    def before_step(self, rows: Tensor | None = None) -> None:
        """Call after backward, before the optimiser step: remove the gradient component
        parallel to each unit-norm decoder row (the row norm stays put to first order).
        rows: the latents this step touched (lazy Adam); a coder may work on those alone,
        the others' gradient being zero (here every row is done, which is the same)."""
        if self.UNIT_NORM and self.W_dec.grad is not None:
            W, g = self.W_dec, self.W_dec.grad
            g -= (g * W).sum(-1, keepdim=True) * W / W.pow(2).sum(-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def after_step(self, rows: Tensor | None = None) -> None:
        """Call after the optimiser step: renormalise decoder rows where the method keeps them
        unit-norm (rows: as in before_step, the only rows the step moved)."""
        if self.UNIT_NORM:
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def init_from_data(self, x_sample: Float[Tensor, "n d_in"], target: Tensor | None = None) -> None:
        """b_dec at the geometric median of the (normalised) sample, or of the target for transcoders."""
        data = x_sample if self.autoencoder else target
        if data is None:
            return
        self.b_dec.copy_(geometric_median(self.scaled(data.reshape(-1, data.shape[-1])).float()).to(self.b_dec.dtype))

    # Artifacts

    def fold_norm_scale(self) -> SparseCoder:
        """An equivalent coder with norm_scale 1: W_enc * s, W_dec / s, b_dec / s (and what each
        architecture adds); the map on raw activations is unchanged, latents are identical.
        Under input_norm 'layer_norm' s is unused: only the config changes."""
        s = self.cfg.norm_scale
        new = build(self.cfg.replace(norm_scale=1.0))
        state = {k: v.clone() for k, v in self.state_dict().items()}
        for name, v in (self.fold_rules(s) if self.cfg.input_norm == "none" else {}).items():
            state[name] = v
        new.load_state_dict(state)
        return new.train(self.training)  # an eval-mode coder stays in eval mode (BatchTopK's threshold)

    def fold_rules(self, s: float) -> dict[str, Tensor]:
        """Weights that change when the input scale s is folded in (W_skip does not: input and
        target share s, so s x W_skip / s = x W_skip)."""
        # (s x - b_dec) W_enc = (x - b_dec / s)(s W_enc); (acts W_dec + b_dec) / s = acts (W_dec / s) + b_dec / s
        return {"W_enc": self.W_enc.detach() * s, "W_dec": self.W_dec.detach() / s, "b_dec": self.b_dec.detach() / s}

    def save(self, folder: str | Path) -> Path:
        """cfg.json + sae.safetensors, each written atomically."""
        folder = Path(folder)
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        io.write_tensors(folder / WEIGHTS_FILE, tensors, metadata={"format": FORMAT})
        io.write_json(folder / "cfg.json", {"format": FORMAT, **self.cfg.to_dict()})
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device | None = None) -> SparseCoder:
        """Load a mechscope dictionary folder (dispatches on cfg.arch), in eval mode
        (BatchTopK encodes with its learned threshold); call .train() to resume training."""
        folder = Path(folder)
        cfg_path = folder / "cfg.json"
        if not cfg_path.exists():
            raise MechscopeError(
                f"{folder} has no cfg.json: it is not a dictionary folder "
                "(for SAELens or sparsify folders use mechscope.dictionary.read)"
            )
        data = io.read_json(cfg_path)
        if data.get("format") != FORMAT:
            raise MechscopeError(
                f"{folder} is not a mechscope dictionary (cfg.json format={data.get('format')!r}): "
                "use mechscope.dictionary.read for SAELens or sparsify folders"
            )
        cfg = CoderConfig.from_dict(data, source=str(cfg_path))
        try:
            coder = build(cfg)
        except MechscopeError as err:  # e.g. a size that cannot be allocated
            raise MechscopeError(f"{cfg_path}: {err}") from None
        state = io.read_tensors(folder / WEIGHTS_FILE, "dictionary weights", device=str(device or "cpu"))
        load_weights(coder, state, folder / WEIGHTS_FILE)
        coder.eval()
        return coder.to(device) if device is not None else coder

    def direction(self, feature: int) -> Float[Tensor, " d_out"]:
        """Unit decoder row of one latent (for model.steer). Under input_norm 'layer_norm' it is a
        direction of the standardised space: the same direction in raw units, where a unit step
        there is a step of the input's std."""
        if not 0 <= feature < self.cfg.d_sae:
            raise MechscopeError(
                f"feature {feature} is out of range: this dictionary has {self.cfg.d_sae} latents "
                f"(0-{self.cfg.d_sae - 1})"
            )
        row = self.W_dec[feature].detach().float()
        return row / row.norm().clamp_min(1e-12)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"arch={c.arch}, d_in={c.d_in}, d_sae={c.d_sae}, d_out={c.out_dim}, hook_name={c.hook_name!r}"


def mse(x_hat: Tensor, target: Tensor) -> Tensor:
    """Squared error summed over the feature axis, averaged over the batch."""
    return (x_hat.float() - target.float()).pow(2).sum(-1).mean()


def normalized_mse(x_hat: Tensor, target: Tensor) -> Tensor:
    """Squared error divided by the target's variance around its batch mean."""
    t = target.float()
    return (x_hat.float() - t).pow(2).sum() / (t - t.mean(0)).pow(2).sum().clamp_min(1e-12)


def build(cfg: CoderConfig) -> SparseCoder:
    """A freshly initialised dictionary of cfg.arch (refused when it cannot fit in memory)."""
    from . import (  # noqa: F401  (register)
        batchtopk,
        crosscoder,  # noqa: F401  (register)
        gated,
        jumprelu,
        matryoshka,
        relu,
        switch,
        topk,
    )

    if cfg.arch not in _REGISTRY:
        raise MechscopeError(f"no dictionary class is registered for arch '{cfg.arch}': known: {', '.join(_REGISTRY)}")
    check_memory(cfg)
    return _REGISTRY[cfg.arch](cfg)


def load_weights(coder: SparseCoder, state: dict[str, Tensor], source: str | Path) -> SparseCoder:
    """Load `state` into `coder`, refusing (in one line naming `source`) tensors that are
    missing, extra, of another shape than the config gives, or that hold NaN or inf."""
    expected = coder.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        what = "; ".join(
            filter(
                None,
                (
                    f"lacks {', '.join(missing)}" if missing else "",
                    f"has unexpected {', '.join(extra)}" if extra else "",
                ),
            )
        )
        raise MechscopeError(
            f"{source} {what} for a {coder.cfg.arch} dictionary: the weights and the config "
            "belong to different dictionaries; restore the folder or save the dictionary again"
        )
    for name, want in expected.items():
        found = state[name]
        if tuple(found.shape) != tuple(want.shape):
            raise MechscopeError(
                f"{source}: tensor {name} has shape {list(found.shape)} but the config "
                f"(d_in={coder.cfg.d_in}, d_sae={coder.cfg.d_sae}) expects {list(want.shape)}: "
                "the weights and cfg.json belong to different dictionaries; restore the folder"
            )
        if found.is_floating_point() and not bool(torch.isfinite(found).all()):
            bad = int((~torch.isfinite(found)).sum())
            raise MechscopeError(
                f"{source}: tensor {name} holds {bad} NaN or infinite value(s): the dictionary is "
                "corrupt or its training diverged; restore it or retrain"
            )
    coder.load_state_dict(state)
    return coder
