"""mechscope: a microscope for neural networks.

    import mechscope as ms
    model = ms.load("zoo:pycode")
    run = model.run("def add(a, b):\\n    return", record="blocks.*.hook_resid_post")
"""

from . import attribution, edits, lens, structure
from .errors import MechscopeError
from .model import Model
from .models.loading import load
from .run import Run

__version__ = "0.1.0"
__all__ = ["load", "Model", "Run", "MechscopeError", "edits", "lens", "attribution", "structure", "__version__"]
