"""Shared test settings.

One torch thread: tiny tensors gain nothing from two, and on a busy 2-core machine
thread contention makes small SVDs and matmuls many times slower.
"""

import os
import shutil
from pathlib import Path

import pytest
import torch

from mechscope import zoo

torch.set_num_threads(1)


def _shipped(name: str) -> bool:
    folder = zoo.WEIGHTS / name
    return (folder / "config.json").is_file() or (folder / "cfg.json").is_file()


# The default model's weights come from `mechscope zoo train pycode` (about 40 CPU minutes);
# tests that run it say so instead of failing with a missing-folder error when they are absent.
requires_pycode = pytest.mark.skipif(
    not _shipped("pycode"),
    reason="zoo:pycode weights are not shipped in this checkout: run `mechscope zoo train pycode`",
)


def chromium_path() -> str:
    """Debian's chromium, which the browser tests drive through playwright (no browser download)."""
    return (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else shutil.which("chromium") or "/usr/bin/chromium"
    )


# CI sets MECHSCOPE_REQUIRE_BROWSER=1 (it installs chromium): there a missing browser fails the
# browser tests instead of skipping them.
requires_chromium = pytest.mark.skipif(
    not Path(chromium_path()).exists() and not os.environ.get("MECHSCOPE_REQUIRE_BROWSER"),
    reason="no chromium installed (apt-get install chromium)",
)
