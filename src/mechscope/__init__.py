"""mechscope: a microscope for neural networks.

    import mechscope as ms
    model = ms.load("zoo:pycode")
    run = model.run("def add(a, b):\\n    return", record="blocks.*.hook_resid_post")

The method packages (`ms.lens`, `ms.patching`, `ms.circuits`, `ms.dictionary`, ...) load
on first use, so that `import mechscope` and the command line start quickly.
"""

import importlib

from . import edits, toys  # toys registers the zoo's analyses with mechscope.zoo
from .errors import MechscopeError
from .model import Model
from .models.loading import load
from .run import Run

__version__ = "0.1.0"
METHODS = ("attribution", "circuits", "dictionary", "heads", "lens", "patching", "structure")
__all__ = ["load", "Model", "Run", "MechscopeError", "edits", "toys", *METHODS, "__version__"]


def __getattr__(name: str):
    if name in METHODS:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mechscope' has no attribute {name!r}")
