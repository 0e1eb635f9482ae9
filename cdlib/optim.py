"""The optimizer every training step in cdlib uses: SGD with momentum, fused on CUDA."""

from __future__ import annotations

import inspect
from typing import Iterable

import torch

__all__ = ["make_sgd", "SGD_HAS_FUSED"]

# The single-kernel ("fused") SGD update arrived in torch 2.4; cdlib supports torch from 2.1.
SGD_HAS_FUSED = "fused" in inspect.signature(torch.optim.SGD.__init__).parameters


def make_sgd(parameters: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float,
             device: torch.device, fused: bool = True) -> torch.optim.SGD:
    """SGD over ``parameters``; on CUDA (and when ``fused``) one kernel updates every parameter
    instead of several launches per tensor."""
    kwargs = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
    if fused and device.type == "cuda" and SGD_HAS_FUSED:
        kwargs["fused"] = True
    return torch.optim.SGD(list(parameters), **kwargs)
