"""The two training steps compared: cdlib's, and one done as the paper's reference code did it.

Also the reference's per-image PIL data path (:class:`PilImageSet` and its
transform), which the reference-style configuration is fed by.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from cdlib import data as data_mod
from cdlib import terms
from cdlib.connectors import build_connectors
from cdlib.device import amp_dtype
from cdlib.distiller import Distiller
from cdlib.errors import ConfigError
from cdlib.parts import make_sgd
from cdlib.step import TrainStep

from .config import BenchConfig

__all__ = ["PilImageSet", "reference_train_transform", "pil_image_set", "ReferenceStyleStep", "ours_step",
           "reference_step", "cudnn_tf32", "precision_name"]


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


def reference_train_transform(mean: Sequence[float], std: Sequence[float], size: int = 32, pad: int = 4):
    """The reference's CIFAR-100 training transform (paper.md): reflect-pad 4
    (``Pad(4, padding_mode='reflect')``), random crop 32, flip, ToTensor, Normalize."""
    import torchvision.transforms as T

    return T.Compose([T.Pad(pad, padding_mode="reflect"), T.RandomCrop(size), T.RandomHorizontalFlip(),
                      T.ToTensor(), T.Normalize(mean, std)])


def pil_image_set(tensors: data_mod.TensorImageSet) -> PilImageSet:
    """The same images as ``tensors`` (uint8 NCHW) for the PIL pipeline.

    An HWC *view* of the same memory, not a copy: the reference held its data
    set once (as HWC arrays), so charging it a second copy would inflate its
    memory. PIL copies each strided 3 KB image as it reads it, which costs
    next to nothing.
    """
    images_hwc = tensors.images.permute(0, 2, 3, 1).numpy()
    transform = reference_train_transform(tensors.mean, tensors.std, size=tensors.images.shape[-1])
    return PilImageSet(images_hwc, tensors.labels.tolist(), transform)


class ReferenceStyleStep:
    """One distillation step as the reference code did it, in plain PyTorch.

    Written from the description of the reference code in ``paper.md``, not
    from its source: the teacher's parameters are frozen but the wrapper's
    ``train()`` also puts the teacher in train mode, so its BatchNorm uses
    batch statistics and updates its running statistics; no autocast (fp32);
    every loss term is computed and multiplied by its weight, even a weight of
    0 (so a 0-weighted CE keeps the classifier in the graph with a zero
    gradient, and weight decay still shrinks it). GKD keeps the samples the
    teacher gets right by boolean indexing (a device-to-host sync on a GPU).
    One deliberate departure: GKD divides by ``max(kept, 1)`` where the
    reference divides by ``kept`` and gets NaN when the teacher is wrong on the
    whole batch — with an untrained teacher that happens often, and timing NaN
    arithmetic would measure something else.

    ``step(images, labels, weights)`` returns the same statistics tensor as
    :class:`cdlib.step.TrainStep`; ``last_unweighted_losses`` holds every
    computed term (as tensors: reading them is the caller's sync to make).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, connectors: nn.ModuleList, optimizer,
                 device: torch.device, terms: Sequence[str] = terms.SCHEDULED, kd_temperature: float = 4.0,
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


def cudnn_tf32(device: torch.device) -> bool:
    """Whether cuDNN runs this device's fp32 convolutions as TF32 (Ampere and newer, PyTorch's default)."""
    return (device.type == "cuda" and torch.backends.cudnn.allow_tf32
            and torch.cuda.get_device_capability(device)[0] >= 8)


def precision_name(dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _sgd(parameters, cfg: BenchConfig, device: torch.device, fused: bool) -> torch.optim.SGD:
    return make_sgd(parameters, cfg.lr, cfg.momentum, cfg.weight_decay, device, fused=fused)


def ours_step(student, teacher, cfg: BenchConfig, device: torch.device):
    """cdlib's TrainStep on a Distiller, set up as fit() sets it up; and its description."""
    autocast_dtype = amp_dtype(device, cfg.amp)
    distiller = Distiller(student, teacher, terms=terms.SCHEDULED, teacher_bn_train=False).to(device)
    channels_last = cfg.ours_channels_last(device)
    if channels_last:
        distiller = distiller.to(memory_format=torch.channels_last)
    distiller.train()
    optimizer = _sgd(distiller.trainable_parameters(), cfg, device, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)
    if cfg.compile:
        distiller.student.compile()
        distiller.teacher.compile()
    step = TrainStep(distiller, distiller.terms, optimizer, scaler, device, autocast_dtype, channels_last=channels_last)
    description = {
        "step": "cdlib.step.TrainStep + cdlib.distiller.Distiller",
        "precision": precision_name(autocast_dtype),
        "teacher_mode": "eval, no_grad",
        "zero_weight_losses": "skipped",
        "channels_last": channels_last,
        "fused_sgd": bool(optimizer.defaults.get("fused")),
        "compiled": cfg.compile,
    }
    return step, description


def reference_step(student, teacher, cfg: BenchConfig, device: torch.device):
    """The reference-style step on the same models (its own connectors, plain SGD); and its description."""
    connectors = build_connectors(student.stage_channels, teacher.stage_channels).to(device)
    optimizer = _sgd(list(student.parameters()) + list(connectors.parameters()), cfg, device, fused=False)
    step = ReferenceStyleStep(student, teacher, connectors, optimizer, device)
    description = {
        "step": "cdlib_bench.ReferenceStyleStep",
        "precision": "fp32" + (" (cuDNN convolutions in TF32, PyTorch's default)" if cudnn_tf32(device) else ""),
        "teacher_mode": "train (BatchNorm batch statistics), parameters frozen",
        "zero_weight_losses": "computed",
        "channels_last": False,
        "fused_sgd": False,
        "compiled": False,
    }
    return step, description
