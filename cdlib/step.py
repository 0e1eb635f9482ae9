"""One optimizer step, the watch on its losses, and one evaluation pass: the hot path, shared by the trainer and
the benchmark.

Neither waits for the device: a step returns its statistics as a tensor on the
device, and an evaluation accumulates its sums there until the pass is over.
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .distiller import Distiller
from .distributed import all_reduce
from .errors import ConfigError, TrainingDiverged
from .interrupt import DeferredInterrupt

__all__ = ["TrainStep", "DetachedLogits", "LossWatch", "evaluate", "autocast"]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Autocast to ``dtype`` on ``device``; no autocast for ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    device: torch.device,
    autocast_dtype: Optional[torch.dtype] = None,
    world_size: int = 1,
    channels_last: bool = False,
) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader``.

    With ``world_size > 1`` each process evaluates its shard and the sums are
    combined, so every process returns the same numbers.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top-1 hits, top-5 hits, count
    try:
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, autocast_dtype):
                logits = model(images)
            logits = logits.float()
            hits = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
            # Accumulated on the device: no host sync until the end of the pass.
            sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
            sums[1] += hits[:, 0].sum()
            sums[2] += hits.any(dim=1).sum()
            sums[3] += labels.numel()
    finally:
        model.train(was_training)
    all_reduce(sums, world_size)
    loss, top1, top5, count = sums.tolist()
    if count == 0:
        raise ConfigError("the evaluation set is empty; check the data folder.")
    return {"loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count}


class TrainStep:
    """One optimizer step; returns its statistics as a float64 tensor on the device: (weighted loss
    of each term..., correct predictions, samples, 1).

    A step whose loss weights are all 0 has nothing to learn: it only counts
    (forward without gradients) and leaves weights and optimizer state alone.
    """

    def __init__(self, model: nn.Module, terms: tuple, optimizer, scaler, device: torch.device,
                 autocast_dtype: Optional[torch.dtype], channels_last: bool = True) -> None:
        self.model, self.terms, self.optimizer, self.scaler = model, terms, optimizer, scaler
        self.device, self.autocast_dtype = device, autocast_dtype
        self.channels_last = channels_last and device.type == "cuda"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, weights: Dict[str, float]) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        learns = any(weights.get(t, 0.0) != 0.0 for t in self.terms)
        with torch.set_grad_enabled(learns), autocast(self.device, self.autocast_dtype):
            logits, loss_terms = self.model(images, labels, weights)
        if learns:
            total = sum(loss_terms.values())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        with torch.no_grad():
            # torch.full and torch.zeros launch fill kernels; building these from Python
            # numbers with torch.tensor would copy from the host and wait for the device.
            stat = dict(device=self.device, dtype=torch.float64)
            values = [loss_terms[t].detach().double() if t in loss_terms else torch.zeros((), **stat) for t in self.terms]
            correct = (logits.detach().argmax(1) == labels).sum().double()
            return torch.stack(values + [correct, torch.full((), float(len(labels)), **stat), torch.ones((), **stat)])


class DetachedLogits(nn.Module):
    """What DDP wraps: the distiller, returning its logits detached.

    DDP's search for parameters without a gradient (find_unused_parameters)
    starts from the forward's outputs; with the logits among them it would
    count the classifier as used during EDT's CD-only warm-up (cross-entropy
    weight 0), wait for a gradient that never comes, and fail the next step.
    The loss terms, computed inside the distiller, are unaffected.
    """

    def __init__(self, distiller: Distiller) -> None:
        super().__init__()
        self.distiller = distiller

    def forward(self, images, targets, weights):
        logits, loss_terms = self.distiller(images, targets, weights)
        return logits.detach(), loss_terms


class LossWatch:
    """A run's health, watched without waiting for the device: per loss term, the first step of the current
    epoch whose value was non-finite (inf: none yet), kept on the device and read only at log points. Under
    ``torchrun`` one small all-reduce (a minimum) at a log point makes a loss that went bad on one process, or
    a Ctrl-C that reached one process, stop all of them at the same step, so none is left waiting."""

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
        raise TrainingDiverged(f"loss term {term!r} became non-finite (NaN or infinite) at step {int(step)} of epoch "
                               f"{epoch}{also}, so training stopped and the bad state was not saved; {last_checkpoint} "
                               f"— start again with a lower learning rate or a lower weight for {term!r}, in a new run "
                               "folder.")
