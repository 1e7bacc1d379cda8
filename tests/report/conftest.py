"""The demo report (`make demo`: zoo:pycode on the Makefile's prompt), built once for the
page tests and the browser tests, with every embedded figure checked as it is saved."""

from __future__ import annotations

import pytest

import mechscope as ms
from mechscope.report import build_report
from mechscope.report.figures import checking

from .page import Page

DEMO_PROMPT = (
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b"  # the Makefile's, as printf gives it
)


def build_checked(name: str, prompt: str | None, out):
    """(html, parsed page, [(title, problems, figure)] of every figure saved, path)."""
    with checking() as seen:
        path = build_report(ms.load(name), prompt, out)
    text = path.read_text()
    return text, Page(text), seen, path


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory):
    return build_checked("zoo:pycode", DEMO_PROMPT, tmp_path_factory.mktemp("demo"))
