"""FLOPs of a distillation step, GPU peak rates, and what they project for a whole recipe.

Counted with ``torch.utils.flop_counter`` on the meta device: exact for any
batch size, and free even for ResNet152. The projection is a FLOP-based
estimate, not a measurement.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Optional

import torch

from .. import models, terms
from ..distiller import Distiller
from .config import CIFAR_CLASSES, CIFAR_IMAGE_SIZE, CIFAR_TRAIN_IMAGES, DEFAULT_ASSUMED_UTILISATION, PAPER_EPOCHS

__all__ = ["PEAK_DENSE_TFLOPS", "PROJECTION_GPUS", "count_flops", "count_step_flops", "gpu_model_key",
           "peak_tflops", "project_recipe"]

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


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the matmuls and convolutions ``fn()`` runs,
    forward and backward, as ``torch.utils.flop_counter.FlopCounterMode`` counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _step_parts(teacher: str, student: str, batch_size: int, image_size: int, num_classes: int):
    """The four computations count_step_flops counts, on the meta device, every term on."""
    meta = torch.device("meta")
    with meta:
        student_net = models.create(student, num_classes=num_classes)
        teacher_net = models.create(teacher, num_classes=num_classes)
        distiller = Distiller(student_net, teacher_net, terms=terms.SCHEDULED)
    distiller.train()
    images = torch.empty(batch_size, 3, image_size, image_size, device=meta)
    labels = torch.zeros(batch_size, dtype=torch.long, device=meta)
    all_on = {t: 1.0 for t in terms.SCHEDULED}

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

    return full_step, teacher_forward, student_forward, teacher_training_step


def count_step_flops(teacher: str, student: str, batch_size: int, image_size: int = CIFAR_IMAGE_SIZE,
                     num_classes: int = CIFAR_CLASSES) -> Dict[str, object]:
    """Model FLOPs of one distillation step of the full method (every term of ``terms.SCHEDULED`` on).

    Counted on the meta device, so nothing is computed and the count is exact
    for any batch size. The split: teacher forward, student forward (alone),
    and the rest (student backward, connectors forward and backward).
    The optimizer's element-wise update is not a matmul and is not counted.
    """
    full_step, teacher_forward, student_forward, teacher_training_step = _step_parts(
        teacher, student, batch_size, image_size, num_classes)
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
