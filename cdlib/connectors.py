"""Connectors: map a student stage's channels to its teacher's.

A connector is a 1x1 convolution (no bias), BatchNorm and ReLU. It is trained
with the student and discarded afterwards; the reference implementation puts
one on every stage, even where channel counts already agree, and so do we.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

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
        raise ValueError(
            f"student has {len(student_channels)} stages {tuple(student_channels)} but teacher has "
            f"{len(teacher_channels)} {tuple(teacher_channels)}; pick a teacher/student pair with the same number of stages."
        )
    return nn.ModuleList(Connector(s, t) for s, t in zip(student_channels, teacher_channels))
