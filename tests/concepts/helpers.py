"""Python source from the standard library (zoo:pycode's own corpus), cut into pieces."""

from __future__ import annotations

import sysconfig
from pathlib import Path


def stdlib_texts(n: int, *, start: int = 0, chars: int = 1500) -> list[str]:
    """`chars` characters of code from n stdlib modules (sorted by name): each piece starts
    at the first top-level `def` past the middle of its file, so that it is mostly code
    rather than the module docstring."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    for f in sorted(root.glob("*.py")):
        text = f.read_text(encoding="utf-8")
        at = text.find("\ndef ", len(text) // 2)
        if at > 0 and len(text) - at > chars:
            out.append(text[at + 1 : at + 1 + chars])
    return out[start : start + n]
