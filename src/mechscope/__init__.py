"""mechscope: a microscope for neural networks.

    import mechscope as ms
    model = ms.load("zoo:pycode")
    run = model.run("def add(a, b):\\n    return", record="blocks.*.hook_resid_post")

The method packages (`ms.lens`, `ms.patching`, `ms.circuits`, `ms.dictionary`, `ms.steering`,
`ms.concepts`, `ms.incontext`, `ms.vision`, `ms.features`, ...) and
the core (`ms.load`, `ms.Model`, `ms.Run`, `ms.edits`: torch) load on first use, so that
`import mechscope` and the command line start quickly.
"""

import importlib

from . import toys  # registers the zoo's analyses with mechscope.zoo (imports no torch)
from .errors import MechscopeError

__version__ = "0.1.0"
METHODS = (
    "attribution",
    "circuits",
    "concepts",
    "dictionary",
    "features",
    "heads",
    "incontext",
    "lens",
    "patching",
    "steering",
    "structure",
    "vision",
)
CORE = {
    "load": ("models.loading", "load"),
    "Model": ("model", "Model"),
    "Run": ("run", "Run"),
    "edits": ("edits", None),
    "auto_model": ("models.auto_model", "auto_model"),
}  # a Hugging Face model without a table: verified sites
__all__ = ["load", "Model", "auto_model", "Run", "MechscopeError", "edits", "toys", *METHODS, "__version__"]


def __getattr__(name: str):
    if name in METHODS:
        return importlib.import_module(f".{name}", __name__)
    if name in CORE:
        module, attr = CORE[name]
        found = importlib.import_module(f".{module}", __name__)
        return found if attr is None else getattr(found, attr)
    raise AttributeError(f"module 'mechscope' has no attribute {name!r}")
