"""Shared fixtures: zoo:pycode (loaded once) and a few code contrast pairs."""

from __future__ import annotations

import pytest

import mechscope as ms
from tests.conftest import requires_pycode

# code written with additions vs subtractions: a concept pycode has seen plenty of
PAIRS = [
    ("def add(a, b):\n    return a + b", "def add(a, b):\n    return a - b"),
    ("total = total + x", "total = total - x"),
    ("x = y + 1", "x = y - 1"),
    ("count += 1", "count -= 1"),
    ("return n + m", "return n - m"),
    ("i = i + step", "i = i - step"),
]
PROMPTS = ["def f(x):\n    return x", "import os\n", "for i in range(3):", "class A:\n    def"]


@pytest.fixture(scope="session")
def pycode():
    if requires_pycode.args[0]:  # the skip condition: weights not shipped
        pytest.skip(requires_pycode.kwargs["reason"])
    return ms.load("zoo:pycode")
