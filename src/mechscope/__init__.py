"""mechscope: a microscope for neural networks.

    import mechscope as ms
    model = ms.load("zoo:pycode")
    run = model.run("def add(a, b):\\n    return", record="blocks.*.hook_resid_post")
"""

from . import attribution, circuits, dictionary, edits, lens, patching, structure, toys
from .errors import MechscopeError
from .model import Model
from .models.loading import load
from .run import Run

__version__ = "0.1.0"
__all__ = ["load", "Model", "Run", "MechscopeError", "edits", "lens", "patching", "circuits", "dictionary", "attribution", "structure", "toys", "__version__"]
