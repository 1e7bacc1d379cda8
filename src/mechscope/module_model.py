"""`ModuleModel`: any torch module (a CNN, a toy model) with sites named by module path.

Every submodule `path` gives two sites: `path.hook_out` (its output) and `path.hook_in`
(its first input). Recording, edits, gradients and early stopping work as for
transformers; position selection and per-head weights do not apply.
"""

from __future__ import annotations

from torch import Tensor, nn

from .errors import MechscopeError
from .model import Model
from .sites import Site, SiteTable, View

ANY = (("batch", "..."), (None, None))


def module_sites(module: nn.Module) -> list[Site]:
    sites = []
    for path, _ in module.named_modules():
        if path:
            sites += [Site(f"{path}.hook_in", path, "in", View(), *ANY), Site(f"{path}.hook_out", path, "out", View(), *ANY)]
    return sites


class ModuleModel(Model):
    def __init__(self, module: nn.Module, *, name: str | None = None, card: dict | None = None):
        self.hf = module.eval()
        self.tokenizer = None
        self.name = name or type(module).__name__
        self.adapter = None
        self.dims = None
        self.card = card or {}
        self.table = SiteTable(module_sites(module), n_layers=0, family=type(module).__name__)
        self._held_edits = []

    def __repr__(self) -> str:
        return f"ModuleModel({self.name!r}, {type(self.hf).__name__}, {len(self.table)} sites)"

    def info(self) -> dict:
        return {"name": self.name, "family": f"torch module ({type(self.hf).__name__})",
                "parameters": sum(p.numel() for p in self.hf.parameters()), "notes": [],
                "sites": {s.name: {} for s in self.table}}

    @property
    def has_lm_head(self) -> bool:
        return False

    @property
    def output_is_logits(self) -> bool:
        return True

    def tokenize(self, inputs, attention_mask=None) -> dict[str, Tensor]:
        if not isinstance(inputs, Tensor):
            raise MechscopeError(f"{self.name} reads tensors, not text: pass a tensor of inputs [batch, ...]")
        return {"input": inputs.to(self.device)}

    def _call(self, inputs: dict[str, Tensor]) -> Tensor:
        out = self.hf(inputs["input"])
        return out if isinstance(out, Tensor) else out[0]

    def __getattr__(self, name: str):
        if name.startswith(("W_", "b_")) or name in ("final_norm", "unembed", "to_logits", "head_results"):
            raise MechscopeError(f"{self.name} is not a transformer: '{name}' needs an architecture adapter")
        raise AttributeError(name)
