"""Distillation throughput: cdlib's training step against a reference-style one.

``run_benchmark(BenchConfig(...))`` measures images/s of one distillation
step (teacher forward, student forward + backward, connectors, optimizer) for
two configurations in the same process, alternating short timed windows so
that noise from a busy machine hits both alike:

* ``ours``: :class:`cdlib.train.TrainStep` with a :class:`cdlib.distiller.Distiller`
  (teacher in eval mode under ``no_grad``, zero-weight losses skipped), AMP per
  :func:`cdlib.device.amp_dtype`, ``channels_last`` and fused SGD on CUDA,
  optional ``torch.compile``, batches from :class:`cdlib.data.DeviceLoader`
  (uint8 images resident on the device, augmented a batch at a time there);
* ``reference_style``: the same models and batch done the way the paper's
  reference code did it, written here from its description (``paper.md``):
  fp32, the frozen teacher left in train mode (BatchNorm batch statistics,
  drifting running statistics), every loss term computed even at weight 0,
  and a CPU ``DataLoader`` with ``min(4, cpu count)`` worker processes
  applying PIL transforms.

It also counts model FLOPs with ``torch.utils.flop_counter`` (on the meta
device: exact, and free even for ResNet152), reports achieved FLOP/s and
peak memory, and projects the paper's CIFAR-100 recipe (ResNet152 ->
ResNet50, 200 epochs x 50,000 images) onto a T4 and an H100 from FLOPs — a
FLOP-based estimate, not a measurement — and, on a GPU, from the measured
images/s. ``benchmarks/distill_throughput.py`` is the command line;
``notebooks/05_speed.ipynb`` the book chapter.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import inspect
import json
import os
import platform
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import data as data_mod
from . import models, schedules
from .connectors import build_connectors
from .device import amp_dtype, pick_device
from .distiller import Distiller
from .errors import ConfigError

__all__ = [
    "BenchConfig",
    "PEAK_DENSE_TFLOPS",
    "ReferenceStyleStep",
    "PilImageSet",
    "count_flops",
    "count_step_flops",
    "gpu_model_key",
    "peak_tflops",
    "project_recipe",
    "run_benchmark",
    "save_result",
    "default_result_path",
    "find_results_dir",
    "load_results",
    "results_table",
    "plot_throughput",
    "format_summary",
    "format_projection",
    "ablation_effects",
    "REQUIRED_RESULT_KEYS",
]

RESULT_SCHEMA_VERSION = 1

# The paper's CIFAR-100 recipe, the one the projection is about.
PAPER_TEACHER = "cifar_resnet152"
PAPER_STUDENT = "cifar_resnet50"
PAPER_EPOCHS = 200
PAPER_BATCH = 128
CIFAR_TRAIN_IMAGES = 50_000
CIFAR_CLASSES = 100
CIFAR_IMAGE_SIZE = 32
# The full method CD + GKD + EDT: EDT only sets the weights of these terms.
METHOD_TERMS = ("ce", "cd", "gkd")
CONFIGURATIONS = ("ours", "reference_style")
# Extra configurations that swap one ingredient, to attribute the difference.
ABLATIONS = ("ours_step_pil_data", "reference_step_device_data")

# Peak dense (no structured sparsity) throughput in TFLOP/s, from NVIDIA's
# datasheets: H100 Tensor Core GPU datasheet (SXM5 and PCIe columns), H200
# datasheet (SXM), A100 datasheet (same for 40/80 GB, SXM and PCIe), L4, T4
# and V100 (SXM2 / PCIe) datasheets. The Hopper, Ampere and Ada datasheets
# print tensor-core figures "with sparsity"; the dense figure is half of that
# (e.g. H100 SXM BF16 1,979 -> 989.4). "fp32" is the non-tensor-core rate;
# "tf32" is what cuDNN uses for fp32 convolutions on Ampere and newer, because
# PyTorch's torch.backends.cudnn.allow_tf32 defaults to True. None = the GPU
# has no tensor cores for that format (Turing and Volta have no bf16 / tf32).
PEAK_DENSE_TFLOPS: Dict[str, Dict[str, Optional[float]]] = {
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "T4": {"bf16": None, "fp16": 65.0, "tf32": None, "fp32": 8.1},
    "V100 SXM2": {"bf16": None, "fp16": 125.0, "tf32": None, "fp32": 15.7},
    "V100 PCIe": {"bf16": None, "fp16": 112.0, "tf32": None, "fp32": 14.0},
}

# The GPUs the FLOP-based projection is printed for: Colab's free GPU and the
# usual data-centre one. Ours should run fp16 on the T4 (it has no bf16 tensor
# cores, although torch.cuda.is_bf16_supported() answers True there by emulating
# bf16) and bf16 on the H100; reference-style fp32 convolutions run as TF32 on
# the H100.
PROJECTION_GPUS = {
    "T4": {"ours": "fp16", "reference_style": "fp32"},
    "H100 SXM": {"ours": "bf16", "reference_style": "tf32"},
}
# Eager PyTorch ResNets on 32x32 images use a small share of tensor-core peak:
# BatchNorm, ReLU and the residual adds are memory-bound, the 8x8 and 4x4 late
# stages make small matrix products, and small images leave big GPUs waiting on
# kernel launches. 15 % is a round assumption, not a measurement; the estimate
# prints it, next to the hard lower bound at 100 % of peak.
DEFAULT_ASSUMED_UTILISATION = 0.15


# ------------------------------------------------------------------ config


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
    assumed_utilisation: float = DEFAULT_ASSUMED_UTILISATION
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
        schedule = schedules.get("paper-cifar100", epochs=PAPER_EPOCHS)
        weights = schedule(self.epoch)
        return {t: float(weights.get(t, 0.0)) for t in METHOD_TERMS}


# ------------------------------------------------------------------- FLOPs


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the matmuls and convolutions ``fn()`` runs,
    forward and backward, as ``torch.utils.flop_counter.FlopCounterMode`` counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def count_step_flops(teacher: str, student: str, batch_size: int, image_size: int = CIFAR_IMAGE_SIZE,
                     num_classes: int = CIFAR_CLASSES) -> Dict[str, object]:
    """Model FLOPs of one distillation step with every term on (ce, cd, gkd).

    Counted on the meta device, so nothing is computed and the count is exact
    for any batch size. The split: teacher forward, student forward (alone),
    and the rest (student backward, connectors forward and backward).
    The optimizer's element-wise update is not a matmul and is not counted.
    """
    meta = torch.device("meta")
    with meta:
        student_net = models.create(student, num_classes=num_classes)
        teacher_net = models.create(teacher, num_classes=num_classes)
        distiller = Distiller(student_net, teacher_net, terms=METHOD_TERMS)
    distiller.train()
    images = torch.empty(batch_size, 3, image_size, image_size, device=meta)
    labels = torch.zeros(batch_size, dtype=torch.long, device=meta)
    all_on = {t: 1.0 for t in METHOD_TERMS}

    def full_step() -> None:
        _, loss_terms = distiller(images, labels, all_on)
        sum(loss_terms.values()).backward()

    def teacher_forward() -> None:
        with torch.no_grad():
            teacher_net(images, return_features=True)

    def student_forward() -> None:
        with torch.no_grad():
            student_net(images)

    def teacher_training_step() -> None:
        # The teacher trained on its own first: forward and backward, weights trainable again.
        teacher_net.requires_grad_(True)
        teacher_net(images).sum().backward()

    total = count_flops(full_step)
    teacher_fwd = count_flops(teacher_forward)
    student_fwd = count_flops(student_forward)
    teacher_train = count_flops(teacher_training_step)
    per_step = {
        "total": total,
        "teacher_forward": teacher_fwd,
        "student_forward": student_fwd,
        "student_backward_and_connectors": total - teacher_fwd - student_fwd,
    }
    return {
        "teacher": teacher,
        "student": student,
        "batch_size": batch_size,
        "image_size": image_size,
        "per_step": per_step,
        "per_image": {k: v / batch_size for k, v in per_step.items()},
        # Training the teacher itself (cdlib.train.run does it first when no checkpoint is given).
        "teacher_training_per_image": teacher_train / batch_size,
    }


def gpu_model_key(device_name: str) -> Optional[str]:
    """The PEAK_DENSE_TFLOPS key for a CUDA device name, or None when unknown."""
    name = device_name.upper()
    if "H200" in name:
        return "H200"
    if "H100" in name:
        if "NVL" in name:
            return None  # a different board (NVLink pair); no figure in the table
        return "H100 PCIe" if "PCIE" in name else "H100 SXM"
    if "A100" in name:
        return "A100"
    if re.search(r"\bL4\b", name):  # not L40 / L40S
        return "L4"
    if re.search(r"\bT4\b", name):
        return "T4"
    if "V100" in name:
        return "V100 PCIe" if "PCIE" in name else "V100 SXM2"
    return None


def peak_tflops(gpu_key: Optional[str], precision: str) -> Optional[float]:
    """Peak dense TFLOP/s of ``gpu_key`` in ``precision`` (bf16, fp16, tf32, fp32), or None."""
    if gpu_key is None:
        return None
    return PEAK_DENSE_TFLOPS.get(gpu_key, {}).get(precision)


def project_recipe(flops: Dict[str, object], assumed_utilisation: float = DEFAULT_ASSUMED_UTILISATION,
                   epochs: int = PAPER_EPOCHS, images_per_epoch: int = CIFAR_TRAIN_IMAGES) -> Dict[str, object]:
    """FLOP-based estimate of the wall time of a whole recipe on the PROJECTION_GPUS.

    time = total FLOPs / (peak x assumed utilisation). ``hours_at_peak`` is a
    hard lower bound; ``hours_estimate`` depends on the assumption.
    """
    per_image = flops["per_image"]["total"]
    total = per_image * epochs * images_per_epoch
    teacher_total = flops["teacher_training_per_image"] * epochs * images_per_epoch
    gpus = {}
    for gpu, precisions in PROJECTION_GPUS.items():
        gpus[gpu] = {}
        for configuration, precision in precisions.items():
            peak = peak_tflops(gpu, precision)
            seconds_at_peak = total / (peak * 1e12)
            gpus[gpu][configuration] = {
                "precision": precision,
                "peak_tflops": peak,
                "hours_at_peak": seconds_at_peak / 3600,
                "hours_estimate": seconds_at_peak / assumed_utilisation / 3600,
                "teacher_training_hours_estimate": teacher_total / (peak * 1e12) / assumed_utilisation / 3600,
            }
    return {
        "label": "FLOP-based estimate (not a measurement)",
        "teacher": flops["teacher"],
        "student": flops["student"],
        "epochs": epochs,
        "images_per_epoch": images_per_epoch,
        "flops_per_image": per_image,
        "total_flops": total,
        "teacher_training_total_flops": teacher_total,
        "assumed_utilisation": assumed_utilisation,
        "gpus": gpus,
    }


# -------------------------------------------------------- reference style


class PilImageSet(Dataset):
    """HWC uint8 images served through PIL transforms, one image per call —
    how torchvision's CIFAR100 data set (which the reference code used) works."""

    def __init__(self, images_hwc, labels: Sequence[int], transform) -> None:
        self.images = images_hwc
        self.labels = [int(label) for label in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def reference_train_transform(mean: Sequence[float], std: Sequence[float]):
    """The reference's CIFAR-100 training transform: pad-4 crop, flip, ToTensor, Normalize."""
    import torchvision.transforms as T

    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def pil_image_set(tensors: data_mod.TensorImageSet) -> PilImageSet:
    """The same images as ``tensors`` (uint8 NCHW) for the PIL pipeline.

    An HWC *view* of the same memory, not a copy: the reference held its data
    set once (as HWC arrays), so charging it a second copy would inflate its
    memory. PIL copies each strided 3 KB image as it reads it, which costs
    next to nothing.
    """
    images_hwc = tensors.images.permute(0, 2, 3, 1).numpy()
    return PilImageSet(images_hwc, tensors.labels.tolist(), reference_train_transform(tensors.mean, tensors.std))


class ReferenceStyleStep:
    """One distillation step as the reference code did it, in plain PyTorch.

    Written from the description of the reference code in ``paper.md``, not
    from its source: the teacher's parameters are frozen but the wrapper's
    ``train()`` also puts the teacher in train mode, so its BatchNorm uses
    batch statistics and updates its running statistics; no autocast (fp32);
    every loss term is computed and multiplied by its weight, even a weight of
    0. GKD keeps the samples the teacher gets right by boolean indexing (a
    device-to-host sync on a GPU). One deliberate departure: GKD divides by
    ``max(kept, 1)`` where the reference divides by ``kept`` and gets NaN when
    the teacher is wrong on the whole batch — with an untrained teacher that
    happens often, and timing NaN arithmetic would measure something else.

    ``step(images, labels, weights)`` returns the same statistics tensor as
    :class:`cdlib.train.TrainStep`; ``last_unweighted_losses`` holds every
    computed term (as tensors: reading them is the caller's sync to make).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, connectors: nn.ModuleList, optimizer,
                 device: torch.device, terms: Sequence[str] = METHOD_TERMS, kd_temperature: float = 4.0,
                 gkd_temperature: float = 1.0) -> None:
        self.student, self.teacher, self.connectors = student, teacher, connectors
        self.optimizer, self.device, self.terms = optimizer, device, tuple(terms)
        self.kd_temperature, self.gkd_temperature = kd_temperature, gkd_temperature
        self.teacher.requires_grad_(False)
        # The reference called train() on a wrapper holding both networks.
        self.wrapper = nn.ModuleDict({"student": student, "teacher": teacher, "connectors": connectors})
        self.wrapper.train()
        self.last_unweighted_losses: Dict[str, torch.Tensor] = {}

    def _loss(self, term: str, logits, feats, t_logits, t_feats, labels) -> torch.Tensor:
        if term == "ce":
            return F.cross_entropy(logits, labels)
        if term == "cd":
            total = logits.new_zeros(())
            for connector, s, t in zip(self.connectors, feats, t_feats):
                total = total + (connector(s).mean(dim=(2, 3)) - t.mean(dim=(2, 3))).pow(2).mean()
            return total
        if term == "kd":
            temp = self.kd_temperature
            kl = F.kl_div(F.log_softmax(logits / temp, dim=1), F.softmax(t_logits / temp, dim=1), reduction="batchmean")
            return kl * temp * temp
        if term == "gkd":
            temp = self.gkd_temperature
            kept = t_logits.argmax(dim=1) == labels
            kl = F.kl_div(F.log_softmax(logits[kept] / temp, dim=1), F.softmax(t_logits[kept] / temp, dim=1), reduction="sum")
            return kl * temp * temp / kept.sum().clamp_min(1)
        raise ConfigError(f"the reference-style step knows ce, cd, kd and gkd, not {term!r}.")

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, weights: Dict[str, float]) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        logits, feats = self.student(images, return_features=True)
        t_logits, t_feats = self.teacher(images, return_features=True)
        unweighted = {t: self._loss(t, logits, feats, t_logits, t_feats, labels) for t in self.terms}
        weighted = [weights.get(t, 0.0) * unweighted[t] for t in self.terms]
        # PyTorch 1.x (the reference's) zero_grad() wrote zeros rather than freeing the grads.
        self.optimizer.zero_grad(set_to_none=False)
        sum(weighted).backward()
        self.optimizer.step()
        self.last_unweighted_losses = {t: v.detach() for t, v in unweighted.items()}
        with torch.no_grad():
            # Built as TrainStep builds its statistics, so the bookkeeping costs both the same.
            stat = dict(device=self.device, dtype=torch.float64)
            correct = (logits.argmax(1) == labels).sum().double()
            values = [w.detach().double() for w in weighted]
            return torch.stack(values + [correct, torch.full((), float(len(labels)), **stat), torch.ones((), **stat)])


# --------------------------------------------------------------- pipelines


def _make_train_set(cfg: BenchConfig) -> data_mod.TensorImageSet:
    """The images both pipelines see: the real CIFAR-100 training set, or a
    synthetic CIFAR-shaped one drawn straight as uint8 (no float temporaries,
    so the memory probe's baseline is not inflated by building it)."""
    if cfg.data == "cifar100":
        return data_mod.load("cifar100", root=cfg.data_root).train
    g = torch.Generator().manual_seed(cfg.seed)
    images = torch.randint(0, 256, (cfg.dataset_size, 3, CIFAR_IMAGE_SIZE, CIFAR_IMAGE_SIZE), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, CIFAR_CLASSES, (cfg.dataset_size,), generator=g)
    return data_mod.TensorImageSet(images, labels, data_mod.CIFAR100_MEAN, data_mod.CIFAR100_STD, augment=True, pad=4, flip=True)


def _endless(loader) -> Iterator:
    """Batches forever, starting a new epoch (a new shuffle) when one ends."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class _Pipeline:
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


def _build_models(cfg: BenchConfig, device: torch.device):
    torch.manual_seed(cfg.seed)
    student = models.create(cfg.student, num_classes=CIFAR_CLASSES)
    teacher = models.create(cfg.teacher, num_classes=CIFAR_CLASSES)
    return student.to(device), teacher.to(device)


# Fused SGD (one kernel for all parameters) arrived in torch 2.4; cdlib supports 2.1 on.
_SGD_HAS_FUSED = "fused" in inspect.signature(torch.optim.SGD.__init__).parameters


def _sgd(params, cfg: BenchConfig, fused: bool):
    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if fused and _SGD_HAS_FUSED:
        kwargs["fused"] = True
    return torch.optim.SGD(list(params), **kwargs)


def _device_loader(train_set, cfg: BenchConfig, device: torch.device):
    return data_mod.DeviceLoader(train_set, cfg.batch_size, train=True, device=device, seed=cfg.seed)


def _pil_loader(train_set, cfg: BenchConfig, device: torch.device) -> DataLoader:
    # As the reference: shuffle, worker processes, pinned memory for a GPU, and
    # the DataLoader defaults of its time (workers restart every epoch). drop_last
    # keeps every timed step at the full batch size.
    return DataLoader(pil_image_set(train_set), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                      num_workers=cfg.workers(), pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(cfg.seed))


def _ours_step(student, teacher, cfg: BenchConfig, device: torch.device):
    from .train import TrainStep

    autocast_dtype = amp_dtype(device, cfg.amp)
    distiller = Distiller(student, teacher, terms=METHOD_TERMS, teacher_bn_train=False).to(device)
    channels_last = cfg.ours_channels_last(device)
    if channels_last:
        distiller = distiller.to(memory_format=torch.channels_last)
    distiller.train()
    fused = device.type == "cuda" and _SGD_HAS_FUSED
    optimizer = _sgd(distiller.trainable_parameters(), cfg, fused=fused)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    if cfg.compile:
        distiller.student.compile()
        distiller.teacher.compile()
    step = TrainStep(distiller, distiller.terms, optimizer, scaler, device, autocast_dtype, channels_last=channels_last)
    description = {
        "step": "cdlib.train.TrainStep + cdlib.distiller.Distiller",
        "precision": _precision_name(autocast_dtype),
        "teacher_mode": "eval, no_grad",
        "zero_weight_losses": "skipped",
        "channels_last": channels_last,
        "fused_sgd": fused,
        "compiled": cfg.compile,
    }
    return step, description


def _reference_step(student, teacher, cfg: BenchConfig, device: torch.device):
    connectors = build_connectors(student.stage_channels, teacher.stage_channels).to(device)
    optimizer = _sgd(list(student.parameters()) + list(connectors.parameters()), cfg, fused=False)
    step = ReferenceStyleStep(student, teacher, connectors, optimizer, device)
    description = {
        "step": "cdlib.bench.ReferenceStyleStep",
        "precision": "fp32" + (" (cuDNN convolutions in TF32, PyTorch's default)" if _cudnn_tf32(device) else ""),
        "teacher_mode": "train (BatchNorm batch statistics), parameters frozen",
        "zero_weight_losses": "computed",
        "channels_last": False,
        "fused_sgd": False,
        "compiled": False,
    }
    return step, description


def _cudnn_tf32(device: torch.device) -> bool:
    return (device.type == "cuda" and torch.backends.cudnn.allow_tf32
            and torch.cuda.get_device_capability(device)[0] >= 8)


def _precision_name(dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _build_pipeline(name: str, cfg: BenchConfig, train_set, student, teacher, device: torch.device) -> _Pipeline:
    """A configuration by name, on its own deep copies of the models (same initial weights)."""
    student, teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    use_ours_step = name in ("ours", "ours_step_pil_data")
    use_device_data = name in ("ours", "reference_step_device_data")
    step, description = (_ours_step if use_ours_step else _reference_step)(student, teacher, cfg, device)
    if use_device_data:
        loader = _device_loader(train_set, cfg, device)
        description.update(data="cdlib.data.DeviceLoader (uint8 on the device, batch augmentation)", data_workers=0)
        prefetched = 0
    else:
        loader = _pil_loader(train_set, cfg, device)
        description.update(data="torch DataLoader + PIL transforms", data_workers=cfg.workers())
        prefetched = cfg.workers() * 2 if cfg.workers() > 0 else 0  # DataLoader's default prefetch_factor is 2
    return _Pipeline(name, step, loader, device, cfg.loss_weights(), description, prefetched_batches=prefetched,
                     channels_last_input=use_ours_step and cfg.ours_channels_last(device))


# ------------------------------------------------------------------ memory


def _rss_units() -> int:
    """Bytes per ru_maxrss unit: kilobytes on Linux, bytes on macOS."""
    return 1 if platform.system() == "Darwin" else 1024


def _cpu_memory_probe(cfg_dict: dict, name: str, steps: int) -> int:
    """Peak RSS growth (bytes) of building and running one configuration; meant
    to run in a fresh process (see _measure_cpu_memory)."""
    import resource

    cfg = BenchConfig(**cfg_dict)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cpu")
    train_set = _make_train_set(cfg)
    student, teacher = _build_models(cfg, device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pipeline = _build_pipeline(name, cfg, train_set, student, teacher, device)
    del student, teacher  # the pipeline holds its own copies
    for _ in range(steps):
        pipeline.run_step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pipeline.close()
    return (after - before) * _rss_units()


_PROBE_SCRIPT = (
    "import json, sys; from cdlib.bench import _cpu_memory_probe; "
    "job = json.load(sys.stdin); print(_cpu_memory_probe(job['config'], job['name'], job['steps']))"
)


def _measure_cpu_memory(cfg: BenchConfig, name: str, steps: int) -> int:
    """Max-RSS growth (bytes) of one configuration, measured alone in a fresh
    Python process: ru_maxrss is a high-water mark for the whole process, so two
    configurations in one process cannot be told apart. A plain subprocess (not
    multiprocessing) works from scripts, notebooks and stdin alike. The
    reference's DataLoader workers are separate processes and are not included."""
    import subprocess
    import sys

    job = json.dumps({"config": dataclasses.asdict(cfg), "name": name, "steps": steps})
    done = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT], input=job, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe of {name} failed:\n{done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ timing


def _timed_window(pipeline: _Pipeline, steps: int, settle_steps: int) -> float:
    pipeline.start_window()
    for _ in range(settle_steps):
        pipeline.run_step()
    _synchronize(pipeline.device)
    start = time.perf_counter()
    for _ in range(steps):
        pipeline.run_step()
    _synchronize(pipeline.device)
    return time.perf_counter() - start


def _machine(device: torch.device) -> Dict[str, object]:
    info = {
        "device_type": device.type,
        "device_name": _device_name(device),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torchvision

        info["torchvision_version"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_memory_gib=props.total_memory / 2**30, gpu_capability=list(torch.cuda.get_device_capability(device)),
                    cuda_version=torch.version.cuda, gpu_peak_key=gpu_model_key(props.name))
    return info


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({_cpu_model()}, {os.cpu_count()} cores)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_benchmark(cfg: Optional[BenchConfig] = None, log: Optional[Callable[[str], None]] = print) -> Dict[str, object]:
    """Measure both configurations (and the ablations if asked) and return a JSON-ready dict."""
    cfg = cfg or BenchConfig()
    cfg.validate()
    say = log or (lambda message: None)
    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_benchmark(cfg, say)
    finally:
        torch.set_num_threads(threads_before)


def _run_benchmark(cfg: BenchConfig, say: Callable[[str], None]) -> Dict[str, object]:
    device = pick_device(cfg.device)
    if device.type == "cuda":
        # As cdlib's fit() does for its fixed input shapes. The flag is global, so the
        # reference-style configuration gets cuDNN's fastest algorithms as well.
        torch.backends.cudnn.benchmark = True
    names = list(CONFIGURATIONS) + (list(ABLATIONS) if cfg.ablations else [])
    flops = count_step_flops(cfg.teacher, cfg.student, cfg.batch_size)
    say(f"{cfg.teacher} -> {cfg.student}, batch {cfg.batch_size}, on {_device_name(device)}; "
        f"{flops['per_step']['total'] / 1e9:.1f} GFLOP per step; weights {cfg.loss_weights()}")

    memory: Dict[str, Optional[int]] = {}
    memory_steps = max(cfg.warmup_steps, 2)
    if cfg.measure_memory and device.type == "cpu":
        for name in names:
            memory[name] = _measure_cpu_memory(cfg, name, memory_steps)
            say(f"  {name}: max RSS grew {memory[name] / 2**20:.0f} MiB (fresh process, {memory_steps} steps)")

    train_set = _make_train_set(cfg)
    student, teacher = _build_models(cfg, device)
    pipelines: Dict[str, _Pipeline] = {}
    try:
        for name in names:
            # Warm up one configuration at a time; on a GPU the peak memory of the
            # warm-up is that configuration's own (the others' transients are freed).
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                baseline = torch.cuda.memory_allocated(device)
            pipelines[name] = _build_pipeline(name, cfg, train_set, student, teacher, device)
            for index in range(cfg.warmup_steps):
                pipelines[name].run_step()
                if index == 0 and cfg.warmup_steps >= 2 and device.type == "cuda":
                    # The first step's peak holds cuDNN's autotuning workspaces, which
                    # training does not keep paying for: measure from the second step.
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
            _synchronize(device)
            if device.type == "cuda" and cfg.measure_memory:
                memory[name] = torch.cuda.max_memory_allocated(device) - baseline
        del student, teacher

        seconds: Dict[str, List[float]] = {name: [] for name in names}
        for round_index in range(cfg.rounds):
            # Alternate the order so neither configuration always runs first (drift, caches).
            order = names if round_index % 2 == 0 else names[::-1]
            for name in order:
                seconds[name].append(_timed_window(pipelines[name], cfg.steps_per_round, cfg.settle_steps))
            say(f"  round {round_index + 1}/{cfg.rounds}: " + ", ".join(
                f"{n} {cfg.steps_per_round * cfg.batch_size / seconds[n][-1]:.1f} img/s" for n in names))
        finite = {name: pipelines[name].losses_finite() for name in names}
        descriptions = {name: pipelines[name].description for name in names}
    finally:
        for pipeline in pipelines.values():
            pipeline.close()

    gpu_key = gpu_model_key(_device_name(device)) if device.type == "cuda" else None
    configurations = {}
    for name in names:
        configurations[name] = _summarise_configuration(
            descriptions[name], seconds[name], cfg, flops, memory.get(name), device, gpu_key, finite[name])
    ours, ref = configurations["ours"], configurations["reference_style"]
    paired = [r / o for o, r in zip(seconds["ours"], seconds["reference_style"])]
    result = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _machine(device),
        "config": {**dataclasses.asdict(cfg), "reference_workers": cfg.workers(), "loss_weights": cfg.loss_weights(),
                   "terms": list(METHOD_TERMS)},
        "flops": flops,
        "configurations": configurations,
        "ratio_ours_over_reference": ours["images_per_s"] / ref["images_per_s"],
        "paired_round_ratios": paired,
        "projection": _projection(cfg, device, configurations),
        "notes": _notes(cfg, device),
    }
    say(format_summary(result))
    return result


def _summarise_configuration(description, seconds: List[float], cfg: BenchConfig, flops, memory_bytes,
                             device: torch.device, gpu_key: Optional[str], losses_finite: bool) -> Dict[str, object]:
    images = cfg.steps_per_round * cfg.batch_size
    rates = [images / s for s in seconds]
    step_ms = [1000 * s / cfg.steps_per_round for s in seconds]
    median_step_s = statistics.median(step_ms) / 1000
    achieved = flops["per_step"]["total"] / median_step_s / 1e12
    precision = description["precision"].split(" ")[0]
    if precision == "fp32" and _cudnn_tf32(device):
        precision = "tf32"
    peak = peak_tflops(gpu_key, precision)
    return {
        **description,
        "images_per_s": statistics.median(rates),
        "images_per_s_rounds": rates,
        "step_time_ms": statistics.median(step_ms),
        "step_time_ms_rounds": step_ms,
        "peak_memory_mib": None if memory_bytes is None else memory_bytes / 2**20,
        "peak_memory_kind": _memory_kind(device) if memory_bytes is not None else None,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "peak_precision": precision if peak is not None else None,
        "utilisation_of_peak": achieved / peak if peak else None,
        "losses_finite": losses_finite,
    }


def _memory_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return ("torch.cuda.max_memory_allocated over the warm-up steps after the first (cuDNN autotuning), "
                "minus what was allocated before the configuration was built")
    return "growth of the process max RSS (resource.getrusage) building and running it alone in a fresh process; DataLoader workers not included"


def _projection(cfg: BenchConfig, device: torch.device, configurations) -> Dict[str, object]:
    paper_flops = count_step_flops(PAPER_TEACHER, PAPER_STUDENT, PAPER_BATCH)
    projection = {"flop_based_estimate": project_recipe(paper_flops, cfg.assumed_utilisation), "measured": None}
    if device.type == "cuda":
        matches = (cfg.teacher, cfg.student, cfg.batch_size) == (PAPER_TEACHER, PAPER_STUDENT, PAPER_BATCH)
        projection["measured"] = {
            "label": "measured: epochs x images / measured images/s (training steps only, no evaluation)",
            "matches_paper_recipe": matches,
            "pair": f"{cfg.teacher} -> {cfg.student}, batch {cfg.batch_size}",
            "hours": {name: PAPER_EPOCHS * CIFAR_TRAIN_IMAGES / c["images_per_s"] / 3600 for name, c in configurations.items()},
        }
    return projection


def _notes(cfg: BenchConfig, device: torch.device) -> List[str]:
    notes = [
        "Timing: after warm-up, the configurations run alternating windows of steps_per_round steps "
        "(order reversed every round); images/s and step time are medians over rounds.",
        "Each window starts by discarding the batches the reference's DataLoader workers prefetched while "
        "another configuration ran, then runs settle_steps untimed steps.",
        "Both configurations start from the same model weights and see the same images.",
        "FLOPs: torch.utils.flop_counter on the meta device, 2 FLOPs per multiply-add, matmuls and convolutions only.",
    ]
    if cfg.data == "synthetic":
        notes.append("Data: synthetic random uint8 32x32x3 images and labels (100 classes), not CIFAR-100; "
                     "speed does not depend on the pixel values.")
    if device.type == "cuda":
        notes.append("torch.backends.cudnn.benchmark = True for both configurations (cdlib's fit() sets it; the flag is global).")
    if device.type == "cpu" and cfg.amp == "auto" and not cfg.channels_last:
        notes.append("CPU: ours runs fp32 (cdlib.device.amp_dtype keeps CPUs in fp32), and TrainStep uses channels_last "
                     "and fused SGD on CUDA only, so on a CPU the difference is the data pipeline and the step itself.")
    return notes


# ------------------------------------------------------------ results I/O

REQUIRED_RESULT_KEYS = ("schema_version", "created", "machine", "config", "flops", "configurations",
                        "ratio_ours_over_reference", "paired_round_ratios", "projection", "notes")
REQUIRED_CONFIGURATION_KEYS = ("images_per_s", "images_per_s_rounds", "step_time_ms", "peak_memory_mib",
                               "achieved_tflops", "precision", "data", "teacher_mode", "losses_finite")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _ours_options(config: Dict[str, object]) -> List[str]:
    """The options of a result's config that change ours from cdlib's defaults."""
    options = []
    if config.get("amp", "auto") != "auto":
        options.append(f"amp {config['amp']}")
    if config.get("channels_last") is not None:
        options.append("channels_last" if config["channels_last"] else "no channels_last")
    if config.get("compile"):
        options.append("compile")
    return options


def default_result_path(result: Dict[str, object], folder: str | os.PathLike) -> Path:
    """``<folder>/<device>-<date>-<teacher>-to-<student>-b<batch>.json``."""
    machine, config = result["machine"], result["config"]
    if machine["device_type"] == "cuda":
        device = _slug(machine["device_name"])
    else:
        device = f"{machine['device_type']}-{machine['cpu_count']}core"
    date = str(result["created"])[:10]
    # Options that change ours from cdlib's defaults get their own file.
    variant = "".join(f"-{_slug(option)}" for option in _ours_options(config))
    name = f"{device}-{date}-{config['teacher']}-to-{config['student']}-b{config['batch_size']}{variant}.json"
    return Path(folder) / name


def save_result(result: Dict[str, object], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    return path


def find_results_dir(start: str | os.PathLike | None = None) -> Optional[Path]:
    """``benchmarks/results`` in ``start`` (default: the working directory) or a
    folder above it, else next to an editable cdlib checkout; None if neither."""
    here = Path(start or Path.cwd()).resolve()
    candidates = [folder / "benchmarks" / "results" for folder in (here, *here.parents)]
    candidates.append(Path(__file__).resolve().parent.parent / "benchmarks" / "results")
    return next((c for c in candidates if c.is_dir()), None)


def load_results(folder: str | os.PathLike | None) -> List[Dict[str, object]]:
    """Every benchmark result (``*.json``) in ``folder``, oldest first; [] for None."""
    if folder is None:
        return []
    results = []
    for path in sorted(Path(folder).glob("*.json")):
        result = json.loads(path.read_text(encoding="utf8"))
        if isinstance(result, dict) and all(k in result for k in REQUIRED_RESULT_KEYS):
            result["_source"] = path.name
            results.append(result)
    return sorted(results, key=lambda r: r["created"])


def results_table(results: Sequence[Dict[str, object]]):
    """One row per (result, configuration): device, pair, images/s, ratio... as a pandas DataFrame."""
    import pandas as pd

    rows = []
    for result in results:
        machine, config = result["machine"], result["config"]
        device = machine["device_name"] if machine["device_type"] == "cuda" else f"CPU, {machine['cpu_count']} cores"
        run = f"{device}\n{config['teacher']} -> {config['student']}, batch {config['batch_size']}"
        options = _ours_options(config)
        if options:
            run += "\nours with " + ", ".join(options)
        if "_source" not in result:  # not loaded from a file: the run just made
            run += "\n(this run)"
        for name, c in result["configurations"].items():
            rows.append({
                "run": run,
                "source": result.get("_source", "this run"),
                "configuration": name,
                "device": device,
                "pair": f"{config['teacher']} -> {config['student']}",
                "batch": config["batch_size"],
                "ours_options": ", ".join(_ours_options(config)),
                "images_per_s": c["images_per_s"],
                "step_time_ms": c["step_time_ms"],
                "peak_memory_mib": c["peak_memory_mib"],
                "achieved_tflops": c["achieved_tflops"],
                "ratio_ours_over_reference": result["ratio_ours_over_reference"],
                "date": str(result["created"])[:10],
            })
    return pd.DataFrame(rows)


def plot_throughput(table, ax=None):
    """Horizontal bars of images/s per run: ours vs reference-style (and ablations),
    with ours / reference-style written next to each run."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    runs = list(dict.fromkeys(table["run"]))
    if ax is None:
        bars = len(table)
        _, ax = plt.subplots(figsize=(8.0, 1.0 + 0.32 * bars + 0.25 * len(runs)))
    sns.barplot(data=table, y="run", x="images_per_s", hue="configuration", errorbar=None, orient="h", order=runs, ax=ax)
    if table["images_per_s"].max() / max(table["images_per_s"].min(), 1e-9) > 30:
        ax.set_xscale("log")  # CPUs and GPUs differ by orders of magnitude
    ax.set_ylabel("")
    ax.set_xlabel("images / s (median of rounds)")
    ax.set_title("Distillation training throughput")
    for index, run in enumerate(runs):
        rows = table[table["run"] == run]
        ratio = rows["ratio_ours_over_reference"].iloc[0]
        ax.annotate(f" ours {ratio:.2f}x", (rows["images_per_s"].max(), index), xytext=(4, 0),
                    textcoords="offset points", ha="left", va="center", fontsize="small", fontweight="bold")
    ax.set_xlim(right=ax.get_xlim()[1] * (3 if ax.get_xscale() == "log" else 1.2))  # room for the labels
    ax.legend(title=None, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def ablation_effects(result: Dict[str, object]) -> Dict[str, float]:
    """What each ingredient is worth, from a run with ablations: medians of the
    per-round speed ratios of two configurations that differ in that ingredient
    only (windows of one round ran back to back, so each ratio saw the same load)."""
    rounds = {name: c["images_per_s_rounds"] for name, c in result["configurations"].items()}
    if not all(name in rounds for name in ABLATIONS):
        return {}
    pairs = {
        "data pipeline, with ours' step": ("ours", "ours_step_pil_data"),
        "data pipeline, with the reference-style step": ("reference_step_device_data", "reference_style"),
        "step, with DeviceLoader data": ("ours", "reference_step_device_data"),
        "step, with the PIL DataLoader": ("ours_step_pil_data", "reference_style"),
    }
    return {label: statistics.median(f / s for f, s in zip(rounds[fast], rounds[slow]))
            for label, (fast, slow) in pairs.items()}


def format_summary(result: Dict[str, object]) -> str:
    """A plain-text table of the configurations of one result."""
    lines = [f"{'configuration':<28}{'img/s':>10}{'step ms':>10}{'peak MiB':>10}{'TFLOP/s':>9}{'% peak':>8}  precision / data"]
    for name, c in result["configurations"].items():
        memory = "n/a" if c["peak_memory_mib"] is None else f"{c['peak_memory_mib']:.0f}"
        share = "n/a" if c["utilisation_of_peak"] is None else f"{100 * c['utilisation_of_peak']:.1f}"
        lines.append(f"{name:<28}{c['images_per_s']:>10.1f}{c['step_time_ms']:>10.1f}{memory:>10}"
                     f"{c['achieved_tflops']:>9.3g}{share:>8}  {c['precision']}, {c['data'].split(' (')[0]}")
    rounds = ", ".join(f"{r:.2f}" for r in result["paired_round_ratios"])
    lines.append(f"ours / reference-style: {result['ratio_ours_over_reference']:.2f}x (per round: {rounds})")
    for label, effect in ablation_effects(result).items():
        lines.append(f"  worth of the {label}: {effect:.2f}x (median of per-round ratios)")
    return "\n".join(lines)


def _duration(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


def format_projection(projection: Dict[str, object]) -> str:
    """The FLOP-based estimate (and the measured projection, if any) as text."""
    estimate = projection["flop_based_estimate"]
    lines = [
        f"{estimate['label']}: {estimate['teacher']} -> {estimate['student']}, {estimate['epochs']} epochs x "
        f"{estimate['images_per_epoch']:,} images",
        f"  {estimate['flops_per_image'] / 1e9:.2f} GFLOP per image per step -> {estimate['total_flops']:.3g} FLOP in total; "
        f"assumed utilisation {100 * estimate['assumed_utilisation']:.0f}% of dense peak",
    ]
    for gpu, per_config in estimate["gpus"].items():
        for name, e in per_config.items():
            lines.append(f"  {gpu:<9} {name:<16} {e['precision']:<5} peak {e['peak_tflops']:>6.1f} TFLOP/s: "
                         f">= {_duration(e['hours_at_peak'])} at peak, ~{_duration(e['hours_estimate'])} estimated "
                         f"(+ ~{_duration(e['teacher_training_hours_estimate'])} to train the teacher first)")
    measured = projection.get("measured")
    if measured:
        hours = ", ".join(f"{name} {_duration(h)}" for name, h in measured["hours"].items())
        lines.append(f"  measured ({measured['pair']}{'' if measured['matches_paper_recipe'] else ', NOT the paper pair'}): {hours}")
    return "\n".join(lines)
