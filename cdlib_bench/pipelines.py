"""A configuration to time: a step fed by a data loader, with the same images and initial weights for all."""

from __future__ import annotations

import copy
from typing import Dict, Iterator, Optional

import torch
from torch.utils.data import DataLoader

from cdlib import data as data_mod
from cdlib import models

from .config import CIFAR_CLASSES, CIFAR_IMAGE_SIZE, BenchConfig
from .steps import ours_step, pil_image_set, reference_step

__all__ = ["Pipeline", "make_train_set", "build_models", "build_pipeline", "synchronize"]


def make_train_set(cfg: BenchConfig) -> data_mod.TensorImageSet:
    """The images both pipelines see: the real CIFAR-100 training set, or a
    synthetic CIFAR-shaped one drawn straight as uint8 (no float temporaries,
    so the memory probe's baseline is not inflated by building it)."""
    if cfg.data == "cifar100":
        return data_mod.load("cifar100", root=cfg.data_root).train
    g = torch.Generator().manual_seed(cfg.seed)
    images = torch.randint(0, 256, (cfg.dataset_size, 3, CIFAR_IMAGE_SIZE, CIFAR_IMAGE_SIZE), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, CIFAR_CLASSES, (cfg.dataset_size,), generator=g)
    return data_mod.TensorImageSet(images, labels, data_mod.CIFAR100_MEAN, data_mod.CIFAR100_STD, augment=True, pad=4,
                                   flip=True, pad_mode="reflect")


def _endless(loader) -> Iterator:
    """Batches forever, starting a new epoch (a new shuffle) when one ends."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Pipeline:
    """One configuration: a step function fed by a data loader, plus its description."""

    def __init__(self, name: str, step, loader, device: torch.device, weights: Dict[str, float],
                 description: Dict[str, object], prefetched_batches: int = 0, channels_last_input: bool = False) -> None:
        self.name, self.step, self.device, self.weights = name, step, device, weights
        # TrainStep converts inputs to channels_last on CUDA only; elsewhere it is done here.
        self.channels_last_input = channels_last_input and device.type != "cuda"
        self.description = description
        self.loader = loader
        self.batches = _endless(loader)
        self.prefetched_batches = prefetched_batches
        self.stats_sum: Optional[torch.Tensor] = None

    def run_step(self) -> None:
        images, labels = next(self.batches)
        if self.channels_last_input:
            images = images.contiguous(memory_format=torch.channels_last)
        stats = self.step(images, labels, self.weights)
        # Accumulated on the device, as fit() does: no host sync per step.
        self.stats_sum = stats if self.stats_sum is None else self.stats_sum + stats

    def start_window(self) -> None:
        """Throw away batches the DataLoader's workers made while another
        configuration ran: a window must not start with free, ready batches."""
        for _ in range(self.prefetched_batches):
            next(self.batches)

    def losses_finite(self) -> bool:
        return self.stats_sum is None or bool(torch.isfinite(self.stats_sum).all())

    def close(self) -> None:
        self.batches.close()  # ends the DataLoader iterator, which shuts its workers down


def build_models(cfg: BenchConfig, device: torch.device):
    torch.manual_seed(cfg.seed)
    student = models.create(cfg.student, num_classes=CIFAR_CLASSES)
    teacher = models.create(cfg.teacher, num_classes=CIFAR_CLASSES)
    return student.to(device), teacher.to(device)


def _device_loader(train_set, cfg: BenchConfig, device: torch.device):
    return data_mod.DeviceLoader(train_set, cfg.batch_size, train=True, device=device, seed=cfg.seed)


def _pil_loader(train_set, cfg: BenchConfig, device: torch.device) -> DataLoader:
    # As the reference: shuffle, worker processes, pinned memory for a GPU, and
    # the DataLoader defaults of its time (workers restart every epoch). drop_last
    # keeps every timed step at the full batch size.
    return DataLoader(pil_image_set(train_set), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                      num_workers=cfg.workers(), pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(cfg.seed))


def build_pipeline(name: str, cfg: BenchConfig, train_set, student, teacher, device: torch.device) -> Pipeline:
    """A configuration by name, on its own deep copies of the models (same initial weights)."""
    student, teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    use_ours_step = name in ("ours", "ours_step_pil_data")
    use_device_data = name in ("ours", "reference_step_device_data")
    step, description = (ours_step if use_ours_step else reference_step)(student, teacher, cfg, device)
    if use_device_data:
        loader = _device_loader(train_set, cfg, device)
        description.update(data="cdlib.data.DeviceLoader (uint8 on the device, batch augmentation)", data_workers=0)
        prefetched = 0
    else:
        loader = _pil_loader(train_set, cfg, device)
        description.update(data="torch DataLoader + PIL transforms", data_workers=cfg.workers())
        prefetched = cfg.workers() * 2 if cfg.workers() > 0 else 0  # DataLoader's default prefetch_factor is 2
    return Pipeline(name, step, loader, device, cfg.loss_weights(), description, prefetched_batches=prefetched,
                    channels_last_input=use_ours_step and cfg.ours_channels_last(device))
