"""Progress measures for grokking modular addition (Nanda et al. 2023, "Progress measures
for grokking via mechanistic interpretability"), on `zoo:modadd` and its snapshots.

A model that has grokked (a + b) mod p embeds each number a as cos(w_k a), sin(w_k a) for a
few key frequencies w_k = 2πk/p and produces logits cos(w_k(a + b − c)) over answers c.
The measures here read that off a `mechscope.Model` (or a bare ToyTransformer):

- `fourier_basis(p)`: orthonormal rows const, cos 1, sin 1, ..., cos (p−1)/2, sin (p−1)/2
  over Z_p;
- `embedding_fourier_norms`: the norm of W_E (number tokens only) along each basis vector;
  `frequency_energy` sums cos² + sin² per frequency; `key_frequencies` picks the few that
  stand out; `key_frequency_share` is their share of the non-constant squared norm;
- `restricted_loss` / `excluded_loss`: the loss on the training pairs after keeping only
  (restricted) or removing (excluded) the key-frequency components of the logits along the
  answer dimension c. For each input, cos(w_k(a+b−c)) = cos(w_k(a+b))·cos(w_k c) +
  sin(w_k(a+b))·sin(w_k c) lies in the span of cos(w_k c), sin(w_k c), so these are exactly
  the directions the paper keeps or ablates (the constant is kept in both; it does not
  change the softmax);
- `gini` of the Fourier norms of W_E and of the neuron-logit map W_L = W_out W_U (sparsity
  in the Fourier basis), and `sum_squared_weights`;
- `grokking_curves(snapshots, ...)`: all of the above across training snapshots, with the
  three phases located by `find_phases`, as a `GrokkingCurves` (plot, table, save, load).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ..errors import MechscopeError
from ..io import write_tensors
from ..model import Model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ModelLike = Model | nn.Module


def _model(model: ModelLike) -> Model:
    return model if isinstance(model, Model) else Model(cast("PreTrainedModel", model))  # a Hugging Face module


def _modulus(model: Model, p: int | None) -> int:
    """The modulus: the vocabulary is the p numbers and '=' unless p is given."""
    p = model.dims.d_vocab - 1 if p is None else p
    if p % 2 == 0 or p < 3:
        raise MechscopeError(f"the Fourier basis here needs an odd modulus p >= 3, got {p}")
    return p


# Fourier basis over Z_p


def fourier_basis(p: int, dtype: torch.dtype = torch.float32) -> Float[Tensor, "p p"]:
    """Orthonormal rows: constant, then cos(2πkx/p), sin(2πkx/p) for k = 1 .. (p−1)/2."""
    if p % 2 == 0 or p < 3:
        raise MechscopeError(f"fourier_basis needs an odd p >= 3, got {p}")
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    basis = torch.stack(rows)
    basis[1:] /= basis[1:].norm(dim=-1, keepdim=True)
    return basis.to(dtype)


def fourier_labels(p: int) -> list[str]:
    """Names of the rows of `fourier_basis(p)`: 'const', 'cos 1', 'sin 1', ..."""
    return ["const"] + [f"{t} {k}" for k in range(1, (p - 1) // 2 + 1) for t in ("cos", "sin")]


def _frequency_rows(freqs: list[int] | Tensor, p: int) -> list[int]:
    """Rows of the basis holding cos k and sin k for each frequency k."""
    freqs = [int(k) for k in freqs]
    if any(not 1 <= k <= (p - 1) // 2 for k in freqs):
        raise MechscopeError(f"frequencies must lie in 1..{(p - 1) // 2} for p = {p}, got {freqs}")
    return [row for k in freqs for row in (2 * k - 1, 2 * k)]


# Embedding


@torch.no_grad()
def embedding_fourier_norms(model: ModelLike, p: int | None = None) -> Float[Tensor, " p"]:
    """‖(F W_E)_j‖ for each basis row j, with W_E restricted to the p number tokens."""
    m = _model(model)
    p = _modulus(m, p)
    return (fourier_basis(p) @ m.W_E[:p].detach().float()).norm(dim=-1)


def frequency_energy(norms: Float[Tensor, " p"]) -> Float[Tensor, " freq"]:
    """Squared norm per frequency k = 1 .. (p−1)/2 (cos² + sin²) from Fourier norms."""
    return norms[1::2] ** 2 + norms[2::2] ** 2


def key_frequencies(model: ModelLike, p: int | None = None, *, threshold: float = 0.05) -> list[int]:
    """Frequencies (1-based) whose share of the embedding's non-constant squared Fourier norm
    is at least `threshold`, largest first. A trained model has a handful far above it;
    a uniform (random) embedding gives each of the (p−1)/2 frequencies about 2/p."""
    energy = frequency_energy(embedding_fourier_norms(model, p))
    share = energy / energy.sum()
    order = share.argsort(descending=True)
    return [int(k) + 1 for k in order if share[k] >= threshold]


def key_frequency_share(model: ModelLike, freqs: list[int], p: int | None = None) -> float:
    """Fraction of the embedding's non-constant squared Fourier norm that `freqs` carry."""
    energy = frequency_energy(embedding_fourier_norms(model, p))
    rows = _frequency_rows(freqs, 2 * len(energy) + 1)
    return float(energy[[r // 2 for r in rows[::2]]].sum() / energy.sum())


# Restricted and excluded loss


@torch.no_grad()
def number_logits(model: ModelLike, tokens: Tensor, p: int | None = None) -> Float[Tensor, "batch p"]:
    """Last-position logits over the p number tokens (float64), from the model's forward."""
    m = _model(model)
    logits = m.run(tokens).logits
    assert logits is not None  # a run keeps its logits unless told not to
    return logits[:, -1, : _modulus(m, p)].double()


def _key_projection(freqs: list[int], p: int, constant: bool) -> Tensor:
    """Projection matrix [p, p] onto the key frequencies' cos/sin (and the constant)."""
    basis = fourier_basis(p, torch.float64)[([0] if constant else []) + _frequency_rows(freqs, p)]
    return basis.T @ basis


def restricted_logits(logits: Float[Tensor, "batch p"], freqs: list[int]) -> Float[Tensor, "batch p"]:
    """Keep only the constant and the key-frequency components along the answer dimension."""
    return logits @ _key_projection(freqs, logits.shape[-1], True).to(logits)


def excluded_logits(logits: Float[Tensor, "batch p"], freqs: list[int]) -> Float[Tensor, "batch p"]:
    """Remove the key-frequency components along the answer dimension."""
    return logits - logits @ _key_projection(freqs, logits.shape[-1], False).to(logits)


def restricted_loss(model: ModelLike, tokens: Tensor, labels: Tensor, freqs: list[int]) -> float:
    """Cross-entropy of the restricted logits (the paper measures it on the training pairs)."""
    return F.cross_entropy(restricted_logits(number_logits(model, tokens), freqs), labels).item()


def excluded_loss(model: ModelLike, tokens: Tensor, labels: Tensor, freqs: list[int]) -> float:
    """Cross-entropy of the excluded logits (the paper measures it on the training pairs)."""
    return F.cross_entropy(excluded_logits(number_logits(model, tokens), freqs), labels).item()


# Sparsity and weight norm


def gini(x: Tensor) -> float:
    """Gini coefficient of non-negative values: 0 all equal, → 1 all mass on one entry."""
    x = x.detach().double().flatten().sort().values
    n = x.numel()
    if n == 0 or float(x.sum()) == 0.0:
        return 0.0
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float(((2 * i - n - 1) * x).sum() / (n * x.sum()))


@torch.no_grad()
def neuron_logit_fourier_norms(model: ModelLike, p: int | None = None) -> Float[Tensor, " p"]:
    """Norm over neurons of W_L = W_out W_U (number outputs) along each basis row of the answer."""
    m = _model(model)
    p = _modulus(m, p)
    w_l = m.W_out(0).detach().float() @ m.W_U[:, :p].detach().float()  # [d_mlp, p]
    return (w_l @ fourier_basis(p).T).norm(dim=0)


@torch.no_grad()
def sum_squared_weights(model: ModelLike) -> float:
    """Total sum of squared parameters (what weight decay pulls down)."""
    return float(sum(w.double().pow(2).sum() for w in _model(model).hf.parameters()))


# Phases


def find_phases(steps: Tensor, test_loss: Tensor, excluded_loss: Tensor) -> Tensor:
    """The steps at which memorisation, circuit formation and cleanup end, from the curves.

    - circuit formation ends (cleanup starts) at the first snapshot, after the test loss
      peaks, where the test loss is below half its peak: its sharp fall has begun (by then
      the restricted loss has collapsed and the excluded loss has risen, as in the paper);
    - memorisation ends, before that, where the excluded loss is lowest: until then removing
      the key frequencies costs ever less, afterwards ever more, as the generalising circuit
      takes over from memorisation;
    - cleanup ends at the first snapshot after that where the log test loss has covered 95%
      of its way from the peak to its final value. (All are as precise as the snapshot spacing.)
    """
    log_test = test_loss.double().clamp_min(1e-300).log()
    index = torch.arange(len(steps))
    peak_at = int(log_test.argmax())
    peak, final = log_test[peak_at], log_test[-1]
    falling = torch.nonzero((log_test <= peak - math.log(2)) & (index > peak_at)).flatten()
    circuit_end = int(falling[0]) if len(falling) else len(steps) - 1
    mem_end = int(excluded_loss[: circuit_end + 1].double().argmin())
    done = torch.nonzero((log_test <= final + 0.05 * (peak - final)) & (index >= circuit_end)).flatten()
    cleanup_end = int(done[0]) if len(done) else len(steps) - 1
    return steps[[mem_end, circuit_end, cleanup_end]].long()


# Curves across training


@dataclass
class GrokkingCurves:
    """Progress measures across training snapshots (one entry per snapshot, by step)."""

    steps: Tensor
    """Training step of each snapshot [snap] (long)."""
    train_loss: Tensor
    """Cross-entropy on the training pairs [snap]."""
    test_loss: Tensor
    """Cross-entropy on the test pairs [snap]."""
    train_accuracy: Tensor
    """Accuracy on the training pairs [snap]."""
    test_accuracy: Tensor
    """Accuracy on the test pairs [snap]."""
    restricted_loss: Tensor
    """Training loss with only the key frequencies (and the constant) of the logits kept [snap]."""
    excluded_loss: Tensor
    """Training loss with the key frequencies of the logits removed [snap]."""
    gini_embed: Tensor
    """Gini coefficient of the Fourier norms of W_E [snap]."""
    gini_neuron: Tensor
    """Gini coefficient of the Fourier norms of W_L = W_out W_U [snap]."""
    sum_squared_weights: Tensor
    """Total sum of squared weights [snap]."""
    key_share: Tensor
    """Share of the embedding's non-constant squared Fourier norm on the key frequencies [snap]."""
    key_freqs: Tensor
    """The key frequencies (of the last snapshot), largest first [k] (long)."""
    phases: Tensor
    """Steps at which memorisation, circuit formation and cleanup end [3] (long); see `find_phases`."""

    def phase_spans(self) -> dict[str, tuple[int, int]]:
        """{'memorisation': (0, a), 'circuit formation': (a, b), 'cleanup': (b, c)} in steps."""
        a, b, c = (int(x) for x in self.phases)
        return {"memorisation": (int(self.steps[0]), a), "circuit formation": (a, b), "cleanup": (b, c)}

    def plot(self):
        """The paper's figure: losses, restricted/excluded loss, Gini and weight norm vs step."""
        from .grokking_figures import plot_curves

        return plot_curves(self)

    def to_frame(self):
        """One row per snapshot (needs pandas)."""
        try:
            import pandas as pd
        except ImportError:
            raise MechscopeError("GrokkingCurves.to_frame needs pandas: pip install pandas") from None
        per_step = [f.name for f in fields(self) if f.name not in ("key_freqs", "phases")]
        return pd.DataFrame({name: getattr(self, name).numpy() for name in per_step}).set_index("steps")

    def save(self, path: Path) -> Path:
        """Write the curves to a safetensors file, atomically."""
        return write_tensors(
            Path(path),
            {f.name: getattr(self, f.name) for f in fields(self)},
            metadata={"kind": "mechscope.toys.grokking.GrokkingCurves"},
        )

    @classmethod
    def load(cls, path: Path) -> "GrokkingCurves":
        try:
            tensors = load_file(Path(path))
        except (SafetensorError, OSError) as err:
            raise MechscopeError(f"cannot read grokking curves from {path} ({err}): recompute them") from None
        missing = [f.name for f in fields(cls) if f.name not in tensors]
        if missing:
            raise MechscopeError(f"{path} is not a GrokkingCurves file: it lacks {', '.join(missing)}")
        return cls(**{f.name: tensors[f.name] for f in fields(cls)})


@torch.no_grad()
def _measure(
    model: Model, freqs: list[int], p: int, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]
) -> dict[str, float]:
    """Every per-snapshot measure of one model."""
    out = {}
    for name, (tokens, labels) in (("train", train), ("test", test)):
        logits = number_logits(model, tokens, p)
        out[f"{name}_loss"] = F.cross_entropy(logits, labels).item()
        out[f"{name}_accuracy"] = (logits.argmax(-1) == labels).double().mean().item()
        if name == "train":
            out["restricted_loss"] = F.cross_entropy(restricted_logits(logits, freqs), labels).item()
            out["excluded_loss"] = F.cross_entropy(excluded_logits(logits, freqs), labels).item()
    norms = embedding_fourier_norms(model, p)
    energy = frequency_energy(norms)
    out["key_share"] = float(energy[[k - 1 for k in freqs]].sum() / energy.sum())
    out["gini_embed"] = gini(norms)
    out["gini_neuron"] = gini(neuron_logit_fourier_norms(model, p))
    out["sum_squared_weights"] = sum_squared_weights(model)
    return out


def grokking_curves(
    snapshots: Sequence[tuple[int, ModelLike]],
    train_tokens: Tensor,
    train_labels: Tensor,
    test_tokens: Tensor,
    test_labels: Tensor,
    *,
    key_freqs: list[int] | None = None,
    p: int | None = None,
    threshold: float = 0.05,
    progress: bool = False,
) -> GrokkingCurves:
    """Measure every snapshot ``(step, model)``; key frequencies come from the last one unless given."""
    from tqdm.auto import tqdm

    if not snapshots:
        raise MechscopeError("grokking_curves needs at least one (step, model) snapshot")
    snapshots = sorted(snapshots, key=lambda s: s[0])
    last = _model(snapshots[-1][1])
    p = _modulus(last, p)
    freqs = list(key_freqs) if key_freqs is not None else key_frequencies(last, p, threshold=threshold)
    if not freqs:
        raise MechscopeError(
            "no key frequencies: the last snapshot's embedding has no frequency above "
            f"{threshold:.0%} of its Fourier norm; pass key_freqs or a lower threshold"
        )
    rows = [
        _measure(_model(m), freqs, p, (train_tokens, train_labels), (test_tokens, test_labels))
        for _, m in tqdm(snapshots, disable=not progress, desc="snapshots")
    ]
    cols = {name: torch.tensor([r[name] for r in rows], dtype=torch.float64) for name in rows[0]}
    steps = torch.tensor([s for s, _ in snapshots], dtype=torch.long)
    phases = find_phases(steps, cols["test_loss"], cols["excluded_loss"])
    return GrokkingCurves(steps=steps, key_freqs=torch.tensor(freqs, dtype=torch.long), phases=phases, **cols)
