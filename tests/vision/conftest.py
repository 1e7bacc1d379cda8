"""Shared fixtures: zoo:digits and some of its test images (one per class first)."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope.zoo import digits


@pytest.fixture(scope="session")
def digits_model():
    return ms.load("zoo:digits")


@pytest.fixture(scope="session")
def digits_split() -> digits.DigitsData:
    return digits.data(0)


@pytest.fixture(scope="session")
def images(digits_split) -> torch.Tensor:
    """Eight test images, of eight different classes."""
    first = [int((digits_split.y_test == c).nonzero()[0]) for c in range(8)]
    return digits_split.x_test[first]
