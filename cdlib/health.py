"""Watching a run's health without waiting for the device: non-finite losses and agreed stops.

Each step's loss terms are compared with infinity on the device; the first bad
step of each term is kept there and read only at log points. Under
``torchrun`` one small all-reduce (a minimum) at a log point makes a loss that
went bad on one process, or a Ctrl-C that reached one process, stop all of
them at the same step, so none is left waiting in a collective.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.distributed as dist

from .distributed import all_reduce
from .errors import TrainingDiverged
from .interrupt import DeferredInterrupt

__all__ = ["LossWatch"]


class LossWatch:
    """Per loss term, the first step of the current epoch whose value was non-finite (inf: none yet)."""

    def __init__(self, terms: Sequence[str], device: torch.device, world_size: int) -> None:
        self.terms, self.device, self.world_size = tuple(terms), device, world_size
        self.start_epoch()

    def start_epoch(self) -> None:
        self.first_bad_step = torch.full((len(self.terms),), math.inf, device=self.device, dtype=torch.float64)

    def record(self, stats: torch.Tensor, step: int) -> None:
        """Note the terms of ``stats`` (a TrainStep's output) that are non-finite at ``step``; no sync."""
        went_bad = ~torch.isfinite(stats[: len(self.terms)]) & torch.isinf(self.first_bad_step)
        self.first_bad_step = torch.where(went_bad, float(step), self.first_bad_step)

    def check(self, epoch: int, interrupt: DeferredInterrupt, last_checkpoint: str) -> None:
        """At a log point: stop on a non-finite loss or a Ctrl-C, every process alike."""
        requested = torch.full((1,), -float(interrupt.requested), device=self.device, dtype=torch.float64)
        status = all_reduce(torch.cat([self.first_bad_step, requested]), self.world_size, dist.ReduceOp.MIN)
        *first_bad, stop = status.tolist()
        self._raise_if_diverged(first_bad, epoch, last_checkpoint)
        if stop < 0:
            interrupt.requested = True
            raise KeyboardInterrupt

    def check_finite(self, epoch: int, last_checkpoint: str) -> None:
        """Raise TrainingDiverged if any process saw a non-finite loss this epoch."""
        first_bad = all_reduce(self.first_bad_step.clone(), self.world_size, dist.ReduceOp.MIN)
        self._raise_if_diverged(first_bad.tolist(), epoch, last_checkpoint)

    def _raise_if_diverged(self, first_bad: List[float], epoch: int, last_checkpoint: str) -> None:
        bad = sorted((step, term) for term, step in zip(self.terms, first_bad) if math.isfinite(step))
        if not bad:
            return
        (step, term), others = bad[0], [t for _, t in bad[1:]]
        also = f" (then also {', '.join(map(repr, others))})" if others else ""
        raise TrainingDiverged(
            f"loss term {term!r} became non-finite (NaN or infinite) at step {int(step)} of epoch {epoch}{also}, so "
            f"training stopped and the bad state was not saved; {last_checkpoint} — start again with a lower learning "
            f"rate or a lower weight for {term!r}, in a new run folder."
        )
