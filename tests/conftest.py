"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The suite's models are tiny and gain nothing from threads; on a busy 2-core
    machine OpenMP threads waiting for each other made steps up to 10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
