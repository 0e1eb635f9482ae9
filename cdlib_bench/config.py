"""What a benchmark run measures: :class:`BenchConfig`, and the paper's recipe it is about."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from cdlib import models, schedules, terms
from cdlib.errors import ConfigError

from .flops import DEFAULT_ASSUMED_UTILISATION

__all__ = ["BenchConfig", "CONFIGURATIONS", "ABLATIONS", "PAPER_TEACHER", "PAPER_STUDENT", "PAPER_EPOCHS",
           "PAPER_BATCH", "CIFAR_TRAIN_IMAGES", "CIFAR_CLASSES", "CIFAR_IMAGE_SIZE"]

# The paper's CIFAR-100 recipe, the one the projection is about.
PAPER_TEACHER = "cifar_resnet152"
PAPER_STUDENT = "cifar_resnet50"
PAPER_EPOCHS = 200
PAPER_BATCH = 128
CIFAR_TRAIN_IMAGES = 50_000
CIFAR_CLASSES = 100
CIFAR_IMAGE_SIZE = 32
CONFIGURATIONS = ("ours", "reference_style")
# Extra configurations that swap one ingredient, to attribute the difference.
ABLATIONS = ("ours_step_pil_data", "reference_step_device_data")


@dataclass
class BenchConfig:
    """What to measure. Defaults: the paper's CIFAR-100 pair on the best device."""

    teacher: str = PAPER_TEACHER
    student: str = PAPER_STUDENT
    batch_size: int = PAPER_BATCH
    device: str = "auto"
    # "synthetic": random CIFAR-shaped uint8 images and labels made in memory;
    # "cifar100": the real training set under data_root (cifar-100-python/).
    data: str = "synthetic"
    data_root: Optional[str] = None
    # Synthetic set size; CIFAR-100's 50,000 keeps epoch boundaries (where the
    # reference's DataLoader restarts its workers) as rare as in real training.
    dataset_size: int = CIFAR_TRAIN_IMAGES
    # Loss weights come from the paper's CIFAR-100 EDT staircase at this epoch:
    # after epoch 60 every term is on (the case where ours skips nothing), before
    # it CE and GKD weigh 0 and ours skips them.
    epoch: float = 100.0
    warmup_steps: int = 5
    rounds: int = 3
    steps_per_round: int = 20
    # Untimed steps at the start of every window, so each window starts in steady
    # state (the previous window's config is out of the caches and queues).
    settle_steps: int = 1
    amp: str = "auto"  # for ours: auto | bf16 | fp16 | off (see cdlib.device.amp_dtype)
    # channels_last for ours; None = cdlib's choice (CUDA only). True on a CPU tries
    # what cdlib does not do there yet (oneDNN convolutions prefer channels-last).
    channels_last: Optional[bool] = None
    compile: bool = False  # torch.compile the student and teacher in ours
    reference_workers: Optional[int] = None  # None: min(4, cpu count), as the reference's 4
    # torch intra-op threads for both configurations; None keeps torch's default
    # (one per core). On a CPU shared with other work, fewer threads can be faster.
    threads: Optional[int] = None
    measure_memory: bool = True
    ablations: bool = False  # also time ours-with-PIL-data and reference-step-with-device-data
    assumed_utilisation: float = DEFAULT_ASSUMED_UTILISATION  # for the FLOP-based projection (cdlib_bench.flops)
    seed: int = 0
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4

    def validate(self) -> None:
        for role in ("teacher", "student"):
            if getattr(self, role) not in models.names():
                raise ConfigError(f"unknown {role} model {getattr(self, role)!r}; choose one of {', '.join(models.names())}.")
        for name in ("batch_size", "rounds", "steps_per_round"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.warmup_steps < 0 or self.settle_steps < 0:
            raise ConfigError("warmup_steps and settle_steps must not be negative.")
        if self.data not in ("synthetic", "cifar100"):
            raise ConfigError(f"data must be 'synthetic' or 'cifar100', got {self.data!r}.")
        if self.data == "synthetic" and self.dataset_size < self.batch_size:
            raise ConfigError(f"dataset_size {self.dataset_size} is smaller than one batch of {self.batch_size}.")
        if not 0 < self.assumed_utilisation <= 1:
            raise ConfigError(f"assumed_utilisation must be in (0, 1], got {self.assumed_utilisation}.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}.")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"amp must be one of auto, bf16, fp16, off; got {self.amp!r}.")

    def ours_channels_last(self, device: torch.device) -> bool:
        return device.type == "cuda" if self.channels_last is None else self.channels_last

    def workers(self) -> int:
        if self.reference_workers is not None:
            return self.reference_workers
        return min(4, os.cpu_count() or 1)

    def loss_weights(self) -> Dict[str, float]:
        """The weights of the full method CD + GKD + EDT at ``epoch``: EDT sets the scheduled terms."""
        schedule = schedules.get("paper-cifar100", epochs=PAPER_EPOCHS)
        weights = schedule(self.epoch)
        return {t: float(weights.get(t, 0.0)) for t in terms.SCHEDULED}
