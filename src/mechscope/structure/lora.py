"""LoRA adapters read from their files, and what they change in the base model's weights.

`read_adapter(folder)` reads a `peft` LoRA folder as data: `adapter_config.json` (r,
lora_alpha, use_rslora, alpha_pattern, fan_in_fan_out) and `adapter_model.safetensors`
(lora_A [r, in] and lora_B [out, r] per module; lora_embedding_A/B for embeddings). No
code from the folder runs and pickled `adapter_model.bin` files are refused. The merged
update of a module is ΔW = scaling · B A (as nn.Linear stores its weight, [out, in]) with
scaling = alpha / r, or alpha / √r under rsLoRA, alpha from `alpha_pattern` where a
pattern matches the module's name as peft matches it (`(.*\\.)?(pattern)$`).

`lora_forensics(base, adapter)` reports per module: the nominal rank r, the numerical
rank of ΔW (σ_i > rtol · (σ_1(W) + σ_1(ΔW)), the noise floor of `weight_diff`), the rank by
threshold (σ_i >= threshold · σ_1), the spectrum statistics, ‖ΔW‖ / ‖W‖, and the intruder
dimensions (Shuttleworth et al. 2024): among the top `k` left singular vectors of the tuned
matrix W + ΔW, those whose largest |cosine| with every left singular vector of W is below
`epsilon`: directions the fine-tune brought in rather than re-weighted. ΔW's singular
values come from its factors (`factored_svd`), exactly r of them.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import MechscopeError
from ..io import read_json, read_tensors, write_tensors
from ._common import frame, load_json, save_json
from .spectra import factored_svd, spectrum_stats

log = logging.getLogger(__name__)
_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_(embedding_)?([AB])(?:\.[A-Za-z0-9_]+)?(?:\.weight)?$")


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: ΔW = scaling · B A ([out, in] as the module stores its weight)."""

    name: str
    """The module's path in the base model (e.g. model.layers.0.mlp.down_proj)."""
    A: Tensor
    B: Tensor
    scaling: float
    transposed: bool = False
    """The module stores its weight [in, out] (GPT-2's Conv1D, fan_in_fan_out; embeddings)."""

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def factors(self) -> tuple[Tensor, Tensor]:
        """(left, right) with ΔW = left @ right in the weight's own layout, in float64."""
        b, a = self.scaling * self.B.double(), self.A.double()
        return (a.T, b.T) if self.transposed else (b, a)

    def delta(self) -> Tensor:
        left, right = self.factors()
        return left @ right


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter read from a folder."""

    folder: str
    config: dict
    modules: dict[str, LoraModule]
    other: tuple[str, ...] = ()
    """Tensors that are not LoRA factors (modules_to_save: whole trained copies), not analysed."""


def _scaling(config: dict, name: str, r: int) -> float:
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            alpha = value
            break
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _check_config(folder: Path) -> dict:
    if not (folder / "adapter_config.json").is_file():
        raise MechscopeError(f"{folder} is not a peft adapter folder (no adapter_config.json)")
    config = read_json(folder / "adapter_config.json")
    if config.get("peft_type", "LORA") != "LORA":
        raise MechscopeError(f"{folder} holds a {config.get('peft_type')} adapter: only LoRA adapters can be read")
    if config.get("use_dora"):
        raise MechscopeError(f"{folder} is a DoRA adapter: its magnitude vector changes the merge; only LoRA is read")
    if not (folder / "adapter_model.safetensors").is_file():
        bin_file = (folder / "adapter_model.bin").is_file()
        raise MechscopeError(
            f"{folder} has no adapter_model.safetensors"
            + (
                " (only a pickled adapter_model.bin, which is never loaded: re-save it with safetensors)"
                if bin_file
                else ""
            )
        )
    return config


def read_adapter(folder) -> LoraAdapter:
    """A peft LoRA adapter folder, read as data (see the module docstring)."""
    folder = Path(folder)
    config = _check_config(folder)
    tensors = read_tensors(folder / "adapter_model.safetensors", "LoRA adapter")
    parts: dict[str, dict[str, Tensor]] = {}
    embedding, other = set(), []
    for key, value in tensors.items():
        m = _KEY.match(key)
        if m is None:
            other.append(key)
            continue
        parts.setdefault(m.group(1), {})[m.group(3)] = value
        if m.group(2):
            embedding.add(m.group(1))
    modules = {}
    for name, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise MechscopeError(f"{folder}: module {name} has lora_{''.join(ab)} but not both A and B")
        a, b = ab["A"], ab["B"]  # embeddings: A [r, vocab], B [dim, r] and ΔW = (B A)ᵀ [vocab, dim]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise MechscopeError(
                f"{folder}: module {name} has A {list(a.shape)} and B {list(b.shape)}, not [r, in], [out, r]"
            )
        transposed = name in embedding or bool(config.get("fan_in_fan_out"))
        modules[name] = LoraModule(name, a, b, _scaling(config, name, a.shape[0]), transposed)
    if not modules:
        raise MechscopeError(f"{folder}: adapter_model.safetensors holds no LoRA factors (lora_A / lora_B)")
    log.info("LoRA adapter %s: %d modules, %d other tensors", folder, len(modules), len(other))
    return LoraAdapter(str(folder), config, modules, tuple(sorted(other)))


def intruders(base: Tensor, tuned: Tensor, k: int, epsilon: float) -> tuple[list[int], list[float]]:
    """(indices among the tuned matrix's top k left singular vectors whose largest |cos| with
    every left singular vector of `base` is below epsilon, each top vector's largest |cos|)."""
    ub = torch.linalg.svd(base, full_matrices=False).U
    ut = torch.linalg.svd(tuned, full_matrices=False).U[:, :k]
    best = (ut.T @ ub).abs().max(dim=1).values
    return [i for i, c in enumerate(best.tolist()) if c < epsilon], best.tolist()


@dataclass
class LoraForensics:
    """Per adapted module: rank usage, spectrum and intruder dimensions (module docstring)."""

    adapter: str
    rows: list[dict]
    values: dict[str, Tensor]
    """Singular values of each module's ΔW (exactly r of them)."""

    def to_records(self) -> list[dict]:
        return [dict(r) for r in self.rows]

    def to_frame(self):
        return frame(self.to_records())

    def row(self, name: str) -> dict:
        for r in self.rows:
            if r["name"] == name:
                return r
        raise MechscopeError(
            f"no adapted module {name!r}: the adapter has {', '.join(r['name'] for r in self.rows[:4])}"
        )

    def plot(self):
        """Per module: nominal rank, numerical rank, rank by threshold and intruders (left);
        the singular values of each ΔW (right)."""
        from .forensics_plots import lora_figure

        return lora_figure(self.rows, self.values, self.adapter)

    def save(self, folder) -> Path:
        folder = Path(folder)
        write_tensors(folder / "values.safetensors", self.values)
        save_json(folder / "cfg.json", {"kind": "lora_forensics", "adapter": self.adapter, "rows": self.rows})
        return folder

    @classmethod
    def load(cls, folder) -> "LoraForensics":
        folder = Path(folder)
        cfg = load_json(folder / "cfg.json")
        if cfg.get("kind") != "lora_forensics":
            raise MechscopeError(f"{folder} holds a {cfg.get('kind')!r} result, not LoRA forensics")
        return cls(cfg["adapter"], cfg["rows"], read_tensors(folder / "values.safetensors", "singular values"))


def _weight(model, name: str) -> Tensor:
    try:
        module = model.hf.get_submodule(name)
    except AttributeError:
        raise MechscopeError(
            f"the adapter changes {name}, which {model.name} does not have: is it the adapter's base model?"
        ) from None
    return module.weight.detach()


def module_row(model, module: LoraModule, *, rtol: float, threshold: float, k: int, epsilon: float):
    """The row and singular values of one adapted module."""
    w = _weight(model, module.name).double()
    left, right = module.factors()
    if (left.shape[0], right.shape[1]) != tuple(w.shape):
        raise MechscopeError(
            f"the adapter's {module.name} is {[left.shape[0], right.shape[1]]} but the base model's weight is "
            f"{list(w.shape)}: is it the adapter's base model?"
        )
    s = factored_svd(left, right)[1]
    sigma_w = float(torch.linalg.matrix_norm(w, 2))
    tol = rtol * (sigma_w + float(s[0]))
    found, best = intruders(w, w + left @ right, k, epsilon)
    row = {
        "name": module.name,
        "shape": list(w.shape),
        "r": module.rank,
        "scaling": module.scaling,
        "rank": int((s > tol).sum()),
        "rank_threshold": int((s >= threshold * s[0]).sum()) if s[0] > 0 else 0,
        "noise_floor": tol,
        "relative_norm": float(s.norm() / w.norm()) if w.norm() > 0 else math.nan,
        "intruders": len(found),
        "intruder_indices": found,
        "intruder_max_cos": best,
        **spectrum_stats(s, module.rank),
    }
    return row, s


def lora_forensics(
    base, adapter, *, rtol: float = 1e-5, threshold: float = 0.1, k: int = 10, epsilon: float = 0.5
) -> LoraForensics:
    """Rank usage, spectrum and intruder dimensions of every module of a LoRA adapter (a
    folder or a `LoraAdapter`) against the base model's weights (see the module docstring)."""
    if not 0 < threshold <= 1 or not 0 < epsilon <= 1:
        raise MechscopeError(f"threshold and epsilon must lie in (0, 1], got {threshold} and {epsilon}")
    adapter = adapter if isinstance(adapter, LoraAdapter) else read_adapter(adapter)
    rows, values = [], {}
    with torch.no_grad():
        for name in sorted(adapter.modules):
            row, s = module_row(base, adapter.modules[name], rtol=rtol, threshold=threshold, k=k, epsilon=epsilon)
            rows.append(row)
            values[name] = s
    return LoraForensics(adapter.folder, rows, values)
