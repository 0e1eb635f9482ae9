"""Connectors: map a student stage's channels to its teacher's.

A connector is a 1x1 convolution (no bias), BatchNorm and ReLU. It is trained
with the student and discarded afterwards; the reference implementation puts
one on every stage, even where channel counts already agree, and so do we.
"""

from __future__ import annotations

import numbers
from typing import Sequence

from torch import nn

from .errors import ConfigError

__all__ = ["Connector", "build_connectors"]


class Connector(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.in_channels = in_channels
        self.out_channels = out_channels


def build_connectors(student_channels: Sequence[int], teacher_channels: Sequence[int]) -> nn.ModuleList:
    """One connector per stage, from the two models' stage channel counts."""
    if len(student_channels) != len(teacher_channels):
        raise ConfigError(
            f"student has {len(student_channels)} stages {tuple(student_channels)} but teacher has "
            f"{len(teacher_channels)} {tuple(teacher_channels)}; pick a teacher/student pair with the same number of stages."
        )
    bad = [c for c in (*student_channels, *teacher_channels) if isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 1]
    if bad:
        raise ConfigError(f"channel counts must be positive whole numbers, got {bad}; pass a model's stage_channels.")
    return nn.ModuleList(Connector(s, t) for s, t in zip(student_channels, teacher_channels))
