"""Shared fixtures for the core-module tests (losses, schedules, models, data, packaging)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from the same global torch RNG state, so failures reproduce."""
    torch.manual_seed(0)
    yield


def _devices() -> list:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    return devices


@pytest.fixture(params=_devices())
def device(request) -> torch.device:
    """CPU always; CUDA too where a GPU is present."""
    return torch.device(request.param)
