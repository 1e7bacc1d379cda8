"""Loading models and the per-family adapter tables."""

from .adapter import Adapter, Tap
from .families import FAMILIES, adapter_for

__all__ = ["Adapter", "Tap", "FAMILIES", "adapter_for"]
