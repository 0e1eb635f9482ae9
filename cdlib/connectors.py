"""Connectors: map a student stage's channels to its teacher's.

A connector is a 1x1 convolution (no bias), BatchNorm and ReLU. It is trained
with the student and discarded afterwards; the reference implementation puts
one on every stage, even where channel counts already agree, and so do we.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .errors import ConfigError, is_whole

__all__ = ["Connector", "build_connectors"]

MAX_CHANNELS = 65_536  # the widest stage cdlib builds has 2,048


class Connector(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.in_channels = in_channels
        self.out_channels = out_channels


def _check_channels(student_channels, teacher_channels) -> None:
    for name, channels in (("student", student_channels), ("teacher", teacher_channels)):
        if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
            raise ConfigError(f"build_connectors takes lists of stage channel counts, got {type(channels).__name__} "
                              f"for the {name}; pass a model's stage_channels.")
    if len(student_channels) != len(teacher_channels):
        raise ConfigError(f"student has {len(student_channels)} stages {tuple(student_channels)} but teacher has "
                          f"{len(teacher_channels)} {tuple(teacher_channels)}; pick a teacher/student pair with the "
                          "same number of stages.")
    counts = (*student_channels, *teacher_channels)
    bad = [c for c in counts if not is_whole(c) or c < 1]
    if bad:
        raise ConfigError(f"channel counts must be positive whole numbers, got {bad}; pass a model's stage_channels.")
    huge = [c for c in counts if c > MAX_CHANNELS]
    if huge:  # a 1x1 convolution of 10**6 x 10**6 channels would ask for 4 TB
        raise ConfigError(f"channel counts must be at most {MAX_CHANNELS}, got {huge[0]}; pass a model's "
                          "stage_channels.")


def build_connectors(student_channels: Sequence[int],
                     teacher_channels: Sequence[int]) -> nn.ModuleList:
    """One connector per stage, from the two models' stage channel counts."""
    _check_channels(student_channels, teacher_channels)
    return nn.ModuleList(Connector(s, t)
                         for s, t in zip(student_channels, teacher_channels))
