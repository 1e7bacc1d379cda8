"""`ModuleModel`: any torch module (a CNN, a toy model) with sites named by module path.

Every submodule `path` gives two sites: `path.hook_out` (its output) and `path.hook_in`
(its first input). Recording, edits, gradients and early stopping work as for
transformers (`HookedModel`); what needs a transformer (positions, sizes, per-head
weights, generation) is refused with one line.
"""

from __future__ import annotations

from torch import Tensor, nn

from .errors import MechscopeError
from .hooked_model import HookedModel
from .sites import Site, SiteTable, View

ANY = (("batch", "..."), (None, None))
TRANSFORMER_ONLY = (
    "dims",
    "adapter",
    "final_norm",
    "unembed",
    "to_logits",
    "head_results",
    "generate",
    "module",
    "block_module",
    "context_length",
)


class NotATransformer(MechscopeError, AttributeError):
    """A transformer's attribute asked of a plain module model; an AttributeError too, so that
    `getattr(model, "dims", None)` and `hasattr` still tell the two kinds apart."""


def module_sites(module: nn.Module) -> list[Site]:
    sites = []
    for path, _ in module.named_modules():
        if path:
            sites += [
                Site(f"{path}.hook_in", path, "in", View(), *ANY),
                Site(f"{path}.hook_out", path, "out", View(), *ANY),
            ]
    return sites


class ModuleModel(HookedModel):
    """Any torch module, with sites `PATH.hook_in` / `PATH.hook_out` for every submodule.

    Invariants: inputs are tensors [batch, ...] handed to the module's forward as its one
    argument; the main output (its first element when a tuple) is `run.logits`; sites have
    no named axes beyond batch, so `positions=` is refused, and so is everything a
    transformer adapter provides (`dims`, `adapter`, W_* weights, `generate`).

        model = ModuleModel(torchvision_like_cnn)
        run = model.run(images, record="features.3.hook_out")
        with model.edit(ms.edits.zero("classifier.hook_in")):
            model.run(images).logits
    """

    def __init__(self, module: nn.Module, *, name: str | None = None, card: dict | None = None):
        super().__init__(
            module,
            name=name or type(module).__name__,
            table=SiteTable(module_sites(module), n_layers=0, family=type(module).__name__),
        )
        self.card = card or {}

    def __repr__(self) -> str:
        return f"ModuleModel({self.name!r}, {type(self.hf).__name__}, {len(self.table)} sites)"

    def info(self) -> dict:
        return {
            "name": self.name,
            "family": f"torch module ({type(self.hf).__name__})",
            "parameters": sum(p.numel() for p in self.hf.parameters()),
            "notes": [],
            "sites": {s.name: {} for s in self.table},
        }

    @property
    def output_is_logits(self) -> bool:
        return True

    def run(self, prompts, *, positions=None, **kwargs):
        """`HookedModel.run`; positions= is refused: module-path sites have no position axis."""
        if positions is not None:
            raise MechscopeError(
                f"{self.name}'s sites have no position axis: leave positions= out and index the "
                "recorded tensors (run.cache[site][:, ...]) instead"
            )
        return super().run(prompts, **kwargs)

    def tokenize(self, inputs, attention_mask=None) -> dict[str, Tensor]:
        if not isinstance(inputs, Tensor):
            raise MechscopeError(f"{self.name} reads tensors, not text: pass a tensor of inputs [batch, ...]")
        return {"input": inputs.to(self.device)}

    def _call(self, inputs: dict[str, Tensor]) -> Tensor:
        out = self.hf(inputs["input"])
        return out if isinstance(out, Tensor) else out[0]

    def __getattr__(self, name: str):
        if name.startswith(("W_", "b_")) or name in TRANSFORMER_ONLY:
            raise NotATransformer(
                f"{self.name} is not a transformer: '{name}' needs an architecture adapter "
                "(load a Hugging Face model, or use this model's module-path sites)"
            )
        raise AttributeError(name)
