"""Shared test settings.

One torch thread: tiny tensors gain nothing from two, and on a busy 2-core machine
thread contention makes small SVDs and matmuls many times slower.
"""

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
