"""How good a dictionary is, on held-out tokens: reconstruction, sparsity, and what the
model loses when the dictionary's reconstruction replaces the activation.

    result = evaluate(model, sae, data.heldout)       # DictionaryEvaluation
    result.to_dict(); result.plot(); result.save("runs/sae/eval")

Metrics (over the kept positions, see `SourceConfig`; x raw activations, x̂ reconstruction):
- l0: mean number of active latents per token; mse: mean over tokens of ‖x − x̂‖².
- fvu (SAEBench): Σ‖x − x̂‖² / Σ‖x − mean(x)‖², the mean taken per dimension over all
  held-out tokens; explained_variance = 1 − fvu; cosine: mean cos(x, x̂).
- relative_bias (Rajamanoharan et al. 2024, "relative reconstruction bias"): γ minimising
  E‖x̂/γ − x‖², i.e. γ = E‖x̂‖² / E[x̂·x]; 1 is unbiased, below 1 is shrinkage.
- density: firing frequency of each latent; dead_fraction: latents that never fired.
- Spliced (through `mechscope.edits.replace` at the site, kept positions only): next-token
  cross-entropy clean / with x̂ / with zeros; ce_loss_score = (CE_zero − CE_sae) /
  (CE_zero − CE_clean); KL(clean ‖ spliced) per token, and kl_div_score = (KL_zero − KL_sae) / KL_zero.

Transcoders (`cfg.transcoder`): x is the target site's activation and x̂ the transcoder's
output (skip included) on the input site; the splice replaces the target (the MLP's output)
with that output computed in the same forward (`transcoder.splice`), and the zero baseline
zero-ablates the target (the MLP). `target_hook` names the target.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file
from torch import Tensor

from .. import edits
from ..errors import MechscopeError
from ..finite import first_nonfinite
from ..io import write_json, write_tensors
from .attach import warn_if_other_model
from .source import SourceConfig, keep_mask, site_width

log = logging.getLogger(__name__)
KIND = "dictionary_evaluation"


@dataclass
class DictionaryEvaluation:
    """Held-out metrics of one dictionary (see the module docstring for definitions)."""

    model_name: str
    hook_name: str
    n_tokens: int
    d_sae: int
    l0: float
    mse: float
    fvu: float
    explained_variance: float
    cosine: float
    relative_bias: float
    dead_fraction: float
    ce_clean: float = math.nan
    ce_sae: float = math.nan
    ce_zero: float = math.nan
    ce_loss_score: float = math.nan
    kl_sae: float = math.nan
    kl_zero: float = math.nan
    kl_div_score: float = math.nan
    target_hook: str = ""
    """Transcoders: the predicted site (metrics compare it with the output); empty for SAEs."""
    density: Float[Tensor, " d_sae"] | None = None
    """Firing frequency of each latent over the held-out tokens."""

    @property
    def alive_fraction(self) -> float:
        return 1.0 - self.dead_fraction

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "density"}
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()} | {
            "alive_fraction": self.alive_fraction
        }

    def log_density(self, floor: float = -8.0) -> Tensor:
        """log10 firing frequency per latent; dead latents at `floor`."""
        assert self.density is not None  # evaluate() always measures it
        d = self.density.double()
        return torch.where(d > 0, d.clamp_min(1e-30).log10(), torch.full_like(d, floor)).float()

    def plot(self, ax=None):
        """Histogram of log10 feature density (dead latents in the leftmost bar)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3))
        floor = min(-8.0, math.floor(math.log10(1 / max(self.n_tokens, 1))) - 1)
        ax.hist(self.log_density(floor).numpy(), bins=50, color="#4a7ab5")
        ax.set_xlabel("log10 firing frequency (dead latents at the left edge)")
        ax.set_ylabel("latents")
        ax.set_title(f"{self.hook_name}: L0 {self.l0:.1f}, FVU {self.fvu:.3f}, dead {self.dead_fraction:.1%}")
        return ax.figure

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        assert self.density is not None  # evaluate() always measures it
        write_tensors(folder / "density.safetensors", {"density": self.density})
        write_json(folder / "cfg.json", {"kind": KIND, **self.to_dict()})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "DictionaryEvaluation":
        folder = Path(folder)
        data = json.loads((folder / "cfg.json").read_text())
        if data.get("kind") != KIND:
            raise MechscopeError(f"'{folder}' does not hold a dictionary evaluation (kind={data.get('kind')!r})")
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {
            k: (math.nan if v is None else v) for k, v in data.items() if k in names and k != "density"
        }
        return cls(**values, density=load_file(folder / "density.safetensors")["density"])


class _Sums:
    """Running sums over held-out tokens (float64)."""

    def __init__(self, d_in: int, d_sae: int):
        def z(*shape):
            return torch.zeros(*shape, dtype=torch.float64)

        self.n, self.sq_err, self.x_sum, self.x_sq = 0, z(()), z(d_in), z(())
        self.cos, self.dot, self.hat_sq, self.l0, self.fired = z(()), z(()), z(()), z(()), z(d_sae)
        self.ce = {k: z(()) for k in ("clean", "sae", "zero")}
        self.kl = {k: z(()) for k in ("sae", "zero")}
        self.n_pred = 0

    def add(self, x: Tensor, x_hat: Tensor, acts: Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        self.n += len(x)
        self.sq_err += (x - x_hat).pow(2).sum()
        self.x_sum += x.sum(0)
        self.x_sq += x.pow(2).sum()
        self.cos += torch.nn.functional.cosine_similarity(x, x_hat, dim=-1, eps=1e-12).sum()
        self.dot += (x * x_hat).sum()
        self.hat_sq += x_hat.pow(2).sum()
        active = acts != 0
        self.l0 += active.sum()
        self.fired += active.sum(0).double().cpu()


def _log_probs(logits: Tensor) -> Tensor:
    """Next-token log-probabilities at positions 0..pos-2 (float32: the vocab axis is wide)."""
    return logits[:, :-1].float().log_softmax(-1)


@torch.no_grad()
def evaluate(
    model,
    coder,
    tokens: Int[Tensor, "m ctx"],
    *,
    site: str | None = None,
    source: SourceConfig = SourceConfig(),
    batch_size: int = 16,
    splice: bool = True,
    progress: bool = False,
) -> DictionaryEvaluation:
    """Metrics of `coder` (anything with `encode`, `decode(acts, x=...)` and `cfg`) at its site over
    held-out token contexts; `splice=False` skips the three spliced forward passes."""
    from tqdm.auto import tqdm

    site = site or coder.cfg.hook_name
    if not site:
        raise MechscopeError("the dictionary names no site (cfg.hook_name is empty): pass site=...")
    warn_if_other_model(model, coder)
    width = site_width(model, site)
    if width != coder.cfg.d_in:
        raise MechscopeError(f"dictionary d_in={coder.cfg.d_in} but '{site}' is {width} wide: wrong site or dictionary")
    transcoder = getattr(coder.cfg, "transcoder", False)
    target = coder.cfg.target_hook if transcoder else site
    if transcoder:
        from .transcoder import check_order

        check_order(model, site, target)
        width = site_width(model, target)
        if width != coder.cfg.d_out:
            raise MechscopeError(f"transcoder d_out={coder.cfg.d_out} but its target '{target}' is {width} wide")
    if tokens.dim() != 2 or tokens.shape[1] < 2 or len(tokens) == 0:
        raise MechscopeError(f"evaluation needs [n, ctx] token contexts with ctx >= 2, got shape {tuple(tokens.shape)}")
    splice = splice and model.has_lm_head
    sums = _Sums(width, coder.cfg.d_sae)
    for i in tqdm(range(0, len(tokens), batch_size), desc="evaluating", disable=not progress):
        ids = tokens[i : i + batch_size].to(model.device)
        keep = keep_mask(ids, source)
        run = model.run(ids, record=sorted({site, target}), logits=splice)
        x = run.cache[site].flatten(2)[keep].float()
        scored = {f"'{s}'": run.cache[s] for s in (site, target)} | {"the logits": run.logits}
        _check_finite(model, scored, i // batch_size)
        acts = coder.encode(x)
        if transcoder:
            x_hat = coder.decode(acts, x=x).float()  # predict(x) without encoding twice
            if coder.cfg.skip:
                x_hat = x_hat + (x.to(coder.W_skip.dtype) @ coder.W_skip).float()
            sums.add(run.cache[target].flatten(2)[keep].float(), x_hat, acts)
        else:
            sums.add(x, coder.decode(acts, x=x).float(), acts)
        if splice:
            _splice(model, coder, site, ids, keep, run.logits, sums)
    out = _result(model, coder, site, sums, splice)
    out.target_hook = target if transcoder else ""
    return out


def _check_finite(model, activations: dict[str, Tensor | None], batch: int) -> None:
    """NaN or inf in what is scored would give null metrics and exit 0: stop, naming the site."""
    where = first_nonfinite(activations)
    if where is not None:
        raise MechscopeError(
            f"the activations at {where} of {model.name} are NaN or inf (held-out batch {batch}): "
            "the model's weights hold NaN or inf (see the warning at load) or overflow in this "
            "dtype; restore the model or use float32"
        )


def _splice(model, coder, site: str, ids: Tensor, keep: Tensor, clean: Tensor, sums: _Sums) -> None:
    if getattr(coder.cfg, "transcoder", False):
        from .transcoder import splice

        _score(model, ids, clean, {"sae": splice(coder, keep), "zero": splice(coder, keep, zero=True)}, sums)
        return

    def swap(zero: bool):
        def fn(value: Tensor) -> Tensor:
            flat = value.flatten(2)
            x = flat.float()
            new = torch.zeros_like(flat) if zero else coder.decode(coder.encode(x), x=x).to(flat.dtype)
            return torch.where(keep[..., None], new, flat).view(value.shape)

        return fn

    _score(model, ids, clean, {name: [edits.replace(site, swap(name == "zero"))] for name in ("sae", "zero")}, sums)


def _score(model, ids: Tensor, clean: Tensor, variants: dict[str, list], sums: _Sums) -> None:
    """Add the CE and KL of the clean logits and of each variant's edited forward to `sums`."""
    target = ids[:, 1:, None].to(clean.device)
    lc = _log_probs(clean)
    pc = lc.exp()
    sums.ce["clean"] -= lc.gather(-1, target).double().sum()
    for name, variant in variants.items():
        lp = _log_probs(model.run(ids, edits=variant).logits)
        sums.ce[name] -= lp.gather(-1, target).double().sum()
        sums.kl[name] += (pc * (lc - lp)).sum(-1).double().sum()
    sums.n_pred += ids.shape[0] * (ids.shape[1] - 1)


def _result(model, coder, site: str, s: _Sums, spliced: bool) -> DictionaryEvaluation:
    if s.n == 0:
        raise MechscopeError("no held-out token was kept (every position excluded): use longer contexts")
    total_var = s.x_sq - s.x_sum.pow(2).sum() / s.n  # Σ‖x − mean(x)‖²
    fvu = float(s.sq_err / total_var.clamp_min(1e-30))
    density = (s.fired / s.n).float()
    out = DictionaryEvaluation(
        model_name=model.name,
        hook_name=site,
        n_tokens=s.n,
        d_sae=coder.cfg.d_sae,
        l0=float(s.l0 / s.n),
        mse=float(s.sq_err / s.n),
        fvu=fvu,
        explained_variance=1.0 - fvu,
        cosine=float(s.cos / s.n),
        relative_bias=float(s.hat_sq / s.dot) if float(s.dot) != 0 else math.nan,
        dead_fraction=float((density == 0).float().mean()),
        density=density,
    )
    if spliced:
        n = s.n_pred
        out.ce_clean, out.ce_sae, out.ce_zero = (float(s.ce[k] / n) for k in ("clean", "sae", "zero"))
        out.kl_sae, out.kl_zero = float(s.kl["sae"] / n), float(s.kl["zero"] / n)
        gap = out.ce_zero - out.ce_clean
        out.ce_loss_score = (out.ce_zero - out.ce_sae) / gap if abs(gap) > 1e-12 else math.nan
        out.kl_div_score = (out.kl_zero - out.kl_sae) / out.kl_zero if out.kl_zero > 1e-12 else math.nan
    return out
