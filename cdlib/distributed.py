"""Where a process trains, and the few collectives the trainer needs under ``torchrun``.

Alone (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) every function here is a plain
local operation, so the trainer has one code path for a CPU, one GPU or many.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from .device import pick_device
from .errors import ConfigError

__all__ = ["Placement", "placement", "all_reduce", "barrier", "main_first", "agree", "share_rank0_buffers",
           "is_main_process"]


@dataclass(frozen=True)
class Placement:
    """Where this process trains: its rank among ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def placement(device_preference: str) -> Placement:
    """This process's place; under torchrun (WORLD_SIZE > 1) joins the process group."""
    device = pick_device(device_preference)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Placement(0, 1, device)
    if device.type not in ("cuda", "cpu"):
        raise ConfigError(f"multi-process training runs on CUDA GPUs or CPUs, not {device.type}; pass --device cpu or cuda.")
    if device.type == "cuda":
        # One GPU per process, chosen before the process group starts so NCCL binds to it.
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Placement(dist.get_rank(), dist.get_world_size(), device)


def is_main_process() -> bool:
    """True alone, and on rank 0 under torchrun: the process that prints reports."""
    return int(os.environ.get("RANK", "0")) == 0


def all_reduce(tensor: torch.Tensor, world_size: int, op=None) -> torch.Tensor:
    """Sum (or ``op``) ``tensor`` over the processes, in place; alone, ``tensor`` as it is."""
    if world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op)
    return tensor


def barrier(place: Placement) -> None:
    if place.world_size > 1:
        dist.barrier()


def main_first(place: Placement, make: Callable[[], object]):
    """``make()`` on rank 0 first, then on the others: a download (data set,
    pretrained weights) happens once and the others find it done. Should rank 0
    fail, it exits and torchrun stops the processes waiting here."""
    if not place.is_main:
        barrier(place)
    result = make()
    if place.is_main:
        barrier(place)
    return result


def agree(place: Placement, flag: bool) -> bool:
    """True on every process if ``flag`` is True on any (one collective under torchrun)."""
    if place.world_size == 1:
        return flag
    value = torch.full((1,), float(flag), device=place.device)
    return bool(all_reduce(value, place.world_size, dist.ReduceOp.MAX).item())


def share_rank0_buffers(place: Placement, module: nn.Module) -> None:
    """DDP keeps parameters identical, but each process's last forward updated its own
    BatchNorm statistics: take rank 0's everywhere, so every process evaluates the model that is saved."""
    if place.world_size > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
