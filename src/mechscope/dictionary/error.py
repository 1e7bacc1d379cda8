"""How much of a dictionary's error is predictable (Engels et al. 2024, "Decomposing the dark
matter of sparse autoencoders"): the error e = x − x̂ is partly a linear function of x.

    result = error_analysis(model, sae, data.heldout)          # ErrorAnalysis
    result.norm_r2, result.vector_r2; result.plot(); result.save("runs/sae/error")

On held-out tokens (kept positions, see `SourceConfig`), split at random into a train and a
test part (`test_fraction`, seeded), three ridge regressions are fitted on the train part and
scored on the test part:
- norm_r2: x -> ‖e‖, R² = 1 − Σ(‖e‖ − pred)² / Σ(‖e‖ − mean‖e‖)² (means over the test tokens);
- vector_r2: x -> e, the fraction of the error's variance explained,
  1 − Σ‖e − ê‖² / Σ‖e − ē‖²;
- input_norm_r2: ‖x‖ alone -> ‖e‖, the baseline that the full x has to beat.
Ridge (with an intercept, in float64): W = (XᵀX + λ·tr(XᵀX)/d·I)⁻¹ XᵀY on centred data, so λ
(`ridge`) is relative to the mean eigenvalue. Near 1: the dictionary misses a linear part of
x (a direction it could have learned); near 0: the error looks like noise to a linear probe.
A transcoder's error is that of its target (y − ŷ), predicted from its input x.
`token_norms` keeps ‖e‖ per token ([n, pos], NaN where a position is excluded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import MechscopeError
from ..io import read_json, read_tensors, write_json, write_tensors
from .attach import warn_if_other_model
from .source import SourceConfig, keep_mask, site_width

KIND = "dictionary_error_analysis"


def ridge_fit(x: Float[Tensor, "n d"], y: Float[Tensor, "n m"], ridge: float = 1e-3) -> tuple[Tensor, Tensor]:
    """(W [d, m], b [m]) minimising Σ‖x W + b − y‖² + λ·tr(XᵀX)/d·‖W‖² (X centred), in float64."""
    if not ridge > 0:
        raise MechscopeError(f"ridge must be positive (the penalty that keeps the fit solvable), got {ridge}")
    x, y = x.double(), y.double()
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    reg = ridge * float(gram.diagonal().mean()) if len(x) > 1 else ridge
    W = torch.linalg.solve(gram + reg * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ yc)
    return W, my - mx @ W


def r2(y: Tensor, pred: Tensor) -> float:
    """1 − Σ(y − pred)² / Σ(y − mean y)², summed over every column (mean per column)."""
    y, pred = y.double(), pred.double()
    total = (y - y.mean(0)).pow(2).sum()
    return float(1 - (y - pred).pow(2).sum() / total) if float(total) > 0 else math.nan


def linear_predictability(
    x: Float[Tensor, "n d"], e: Float[Tensor, "n m"], *, test_fraction: float = 0.5, ridge: float = 1e-3, seed: int = 0
) -> dict:
    """Test R² of ridge predictions of ‖e‖ and e from x, and of ‖e‖ from ‖x‖ (module docstring);
    also the test tokens' indices, actual and predicted ‖e‖."""
    if x.dim() != 2 or e.dim() != 2 or len(x) != len(e):
        raise MechscopeError(
            f"need matching [n, d] inputs and [n, m] errors, got {tuple(x.shape)} and {tuple(e.shape)}"
        )
    if not 0 < test_fraction < 1:
        raise MechscopeError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    n = len(x)
    n_test = round(n * test_fraction)
    if n_test < 2 or n - n_test < 2:
        raise MechscopeError(f"{n} tokens are too few to fit on one part and test on the other: use more contexts")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    x, e = x.double(), e.double()
    norm = e.norm(dim=-1, keepdim=True)
    x_norm = x.norm(dim=-1, keepdim=True)

    def fit(inputs, targets):
        W, b = ridge_fit(inputs[train], targets[train], ridge)
        return inputs[test] @ W + b

    predicted_norm = fit(x, norm)
    return {
        "norm_r2": r2(norm[test], predicted_norm),
        "vector_r2": r2(e[test], fit(x, e)),
        "input_norm_r2": r2(norm[test], fit(x_norm, norm)),
        "n_train": len(train),
        "n_test": n_test,
        "test_index": test,
        "test_norm": norm[test, 0].float(),
        "test_predicted": predicted_norm[:, 0].float(),
    }


@dataclass
class ErrorAnalysis:
    """Linear predictability of a dictionary's error on held-out tokens (module docstring)."""

    model_name: str
    hook_name: str
    target_hook: str
    n_tokens: int
    n_train: int
    n_test: int
    ridge: float
    norm_r2: float
    vector_r2: float
    input_norm_r2: float
    mean_error_norm: float
    fvu: float
    token_norms: Float[Tensor, "n pos"]
    """‖e‖ per token; NaN where the position is excluded."""
    tokens: Int[Tensor, "n pos"]
    test_norm: Float[Tensor, " n_test"]
    test_predicted: Float[Tensor, " n_test"]
    """Actual and predicted ‖e‖ of the test tokens."""

    TENSORS = ("token_norms", "tokens", "test_norm", "test_predicted")

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.TENSORS}
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}

    def worst(self, k: int = 10) -> list[tuple[int, int, float]]:
        """(context, position, ‖e‖) of the k tokens with the largest error."""
        flat = self.token_norms.nan_to_num(-1.0).flatten()
        top = flat.topk(min(k, int((flat >= 0).sum())))
        width = self.token_norms.shape[1]
        return [(int(i) // width, int(i) % width, float(v)) for v, i in zip(top.values, top.indices)]

    def plot(self):
        """Predicted vs actual error norm on the test tokens, and the three R² as bars."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [3, 2]})
        actual, pred = self.test_norm.numpy(), self.test_predicted.numpy()
        left.scatter(actual, pred, s=4, alpha=0.4, color="#4a7ab5")
        lo, hi = float(min(actual.min(), pred.min())), float(max(actual.max(), pred.max()))
        left.plot([lo, hi], [lo, hi], color="#999", lw=1)
        left.set_xlabel("actual error norm ‖x − x̂‖")
        left.set_ylabel("linear prediction from x")
        left.set_title(f"{self.hook_name}: test tokens ({self.n_test})", fontsize=9)
        names = ["‖e‖ from x", "e from x", "‖e‖ from ‖x‖"]
        values = [self.norm_r2, self.vector_r2, self.input_norm_r2]
        bars = right.bar(names, [0 if math.isnan(v) else v for v in values], color=["#4a7ab5", "#e39c37", "#999"])
        right.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
        right.set_ylim(min(0.0, *[v for v in values if not math.isnan(v)]), 1.0)
        right.set_ylabel("test R²")
        right.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        return fig

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        write_tensors(folder / "errors.safetensors", {k: getattr(self, k).contiguous() for k in self.TENSORS})
        write_json(folder / "cfg.json", {"kind": KIND, **self.to_dict()})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ErrorAnalysis:
        folder = Path(folder)
        path = folder / "cfg.json"
        data = read_json(path) if path.is_file() else {}
        if data.get("kind") != KIND:
            raise MechscopeError(
                f"'{folder}' does not hold a dictionary error analysis (write one with "
                "`mechscope sae error ... --save DIR`)"
            )
        names = {f.name for f in fields(cls)} - set(cls.TENSORS)
        values: dict[str, Any] = {k: (math.nan if v is None else v) for k, v in data.items() if k in names}
        tensors: dict[str, Any] = read_tensors(folder / "errors.safetensors", "error analysis tensors")
        return cls(**values, **tensors)


@torch.no_grad()
def error_analysis(
    model,
    coder,
    tokens: Int[Tensor, "m ctx"],
    *,
    site: str | None = None,
    source: SourceConfig = SourceConfig(),
    test_fraction: float = 0.5,
    ridge: float = 1e-3,
    seed: int = 0,
    batch_size: int = 16,
) -> ErrorAnalysis:
    """Record `coder`'s site (and a transcoder's target) over `tokens`, and measure how much of
    its error a linear map of the input predicts (module docstring)."""
    site = site or coder.cfg.hook_name
    if not site:
        raise MechscopeError("the dictionary names no site (cfg.hook_name is empty): pass site=...")
    warn_if_other_model(model, coder)
    if site_width(model, site) != coder.cfg.d_in:
        raise MechscopeError(f"dictionary d_in={coder.cfg.d_in} but '{site}' is {site_width(model, site)} wide")
    if tokens.dim() != 2 or len(tokens) == 0:
        raise MechscopeError(f"error analysis needs [n, ctx] token contexts, got shape {tuple(tokens.shape)}")
    transcoder = getattr(coder.cfg, "transcoder", False)
    target = coder.cfg.target_hook if transcoder else site
    xs, ys, es, norms = [], [], [], torch.full(tokens.shape, math.nan)
    for i in range(0, len(tokens), batch_size):
        ids = tokens[i : i + batch_size].to(model.device)
        keep = keep_mask(ids, source)
        run = model.run(ids, record=sorted({site, target}), logits=False)
        x = run.cache[site].flatten(2)[keep].float()
        y = run.cache[target].flatten(2)[keep].float()
        e = (y - coder.predict(x).float()) if transcoder else (x - coder.predict(x).float())
        xs.append(x.cpu())
        if transcoder:
            ys.append(y.cpu())
        es.append(e.cpu())
        norms[i : i + batch_size][keep.cpu()] = e.norm(dim=-1).cpu()
    x, e = torch.cat(xs), torch.cat(es)
    fit = linear_predictability(x, e, test_fraction=test_fraction, ridge=ridge, seed=seed)
    y = torch.cat(ys).double() if transcoder else x.double()
    total = float((y - y.mean(0)).pow(2).sum())
    return ErrorAnalysis(
        model_name=model.name,
        hook_name=site,
        target_hook=target if transcoder else "",
        n_tokens=len(x),
        n_train=fit["n_train"],
        n_test=fit["n_test"],
        ridge=ridge,
        norm_r2=fit["norm_r2"],
        vector_r2=fit["vector_r2"],
        input_norm_r2=fit["input_norm_r2"],
        mean_error_norm=float(e.norm(dim=-1).mean()),
        fvu=float(e.double().pow(2).sum()) / max(total, 1e-30),
        token_norms=norms,
        tokens=tokens.cpu(),
        test_norm=fit["test_norm"],
        test_predicted=fit["test_predicted"],
    )
