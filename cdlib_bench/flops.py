"""FLOPs of a training step, counted, and the GPU peak rates they are divided by.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on the
meta device: the real models are built without memory and nothing is
computed, so the count is exact for any batch and free even for ResNet152.
Only matrix products and convolutions count (2 FLOPs per multiply-add);
BatchNorm, ReLU, the losses and the optimizer's update are element-wise and
are not counted. Counts are linear in the batch, so they are given per image.

:data:`PEAK_DENSE_TFLOPS` holds NVIDIA's datasheet peaks and
:data:`DEFAULT_ASSUMED_UTILISATION` the share of them a step is assumed to
reach. ``cdlib estimate`` (:mod:`cdlib_bench.estimate`) and the throughput benchmark
(``cdlib_bench``, beside this package) both use them.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

from cdlib import models
from cdlib import terms as term_table

__all__ = ["PEAK_DENSE_TFLOPS", "DEFAULT_ASSUMED_UTILISATION", "count_flops", "model_flops", "step_flops",
           "gpu_model_key", "peak_tflops"]

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

# Eager PyTorch ResNets on 32x32 images use a small share of tensor-core peak:
# BatchNorm, ReLU and the residual adds are memory-bound, the 8x8 and 4x4 late
# stages make small matrix products, and small images leave big GPUs waiting on
# kernel launches. 15 % is a round assumption, not a measurement, just below
# the 17-29 % NVIDIA's tuned ResNet-50 ImageNet training reaches on an A100
# (README, "Speed"); estimates print it, next to the hard lower bound at 100 %.
DEFAULT_ASSUMED_UTILISATION = 0.15

# FLOPs are linear in the batch; 2 images keep train-mode BatchNorm well defined.
_COUNT_BATCH = 2
_MODEL_CACHE: Dict[tuple, Tuple[float, float]] = {}
_STEP_CACHE: Dict[tuple, float] = {}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-add) of the matmuls and convolutions ``fn()`` runs,
    forward and backward, as ``torch.utils.flop_counter.FlopCounterMode`` counts them."""
    from torch.utils.flop_counter import FlopCounterMode  # imported when needed: it takes seconds

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _meta_batch(image_size: int) -> torch.Tensor:
    return torch.empty(_COUNT_BATCH, 3, image_size, image_size, device="meta")


def model_flops(name: str, image_size: int, num_classes: int) -> Tuple[float, float]:
    """(forward, training step) FLOPs per image of model ``name`` trained alone.

    The training step is the forward plus the backward (about two forwards:
    gradients of the inputs and of the weights; the first convolution computes
    none for the images).
    """
    key = (name, image_size, num_classes)
    if key not in _MODEL_CACHE:
        with torch.device("meta"):
            net = models.create(name, num_classes=num_classes)
        net.train()
        images = _meta_batch(image_size)
        forward = count_flops(lambda: net(images))
        step = count_flops(lambda: net(images).sum().backward())
        _MODEL_CACHE[key] = (forward / _COUNT_BATCH, step / _COUNT_BATCH)
    return _MODEL_CACHE[key]


def step_flops(student: str, teacher: Optional[str], loss_terms: Sequence[str], image_size: int,
               num_classes: int) -> float:
    """FLOPs per image of one distillation training step with ``loss_terms``, every weight on.

    The whole step of a :class:`cdlib.distiller.Distiller`: student forward and
    backward, teacher forward (when a term needs it), connectors and FitNets
    regressor forward and backward. "edt" (a schedule, not a loss) is ignored.
    """
    from cdlib.distiller import Distiller

    loss_terms = tuple(t for t in loss_terms if t != term_table.EDT)
    uses_teacher = term_table.needs_teacher(loss_terms)
    key = (student, teacher if uses_teacher else None, frozenset(loss_terms), image_size, num_classes)
    if key not in _STEP_CACHE:
        with torch.device("meta"):
            student_net = models.create(student, num_classes=num_classes)
            teacher_net = models.create(teacher, num_classes=num_classes) if uses_teacher else None
            distiller = Distiller(student_net, teacher_net, terms=loss_terms)
        distiller.train()
        images = _meta_batch(image_size)
        labels = torch.zeros(_COUNT_BATCH, dtype=torch.long, device="meta")

        def training_step() -> None:
            _, losses = distiller(images, labels, {t: 1.0 for t in loss_terms})
            sum(losses.values()).backward()

        _STEP_CACHE[key] = count_flops(training_step) / _COUNT_BATCH
    return _STEP_CACHE[key]


# (pattern, PEAK_DENSE_TFLOPS key) for upper-cased CUDA device names; the first match wins. The H100 NVL
# (an NVLink pair) is a different board with no figure in the table; \bL4\b is not L40 / L40S.
_GPU_NAMES = (("H200", "H200"), ("H100.*NVL", None), ("H100.*PCIE", "H100 PCIe"), ("H100", "H100 SXM"),
              ("A100", "A100"), (r"\bL4\b", "L4"), (r"\bT4\b", "T4"), ("V100.*PCIE", "V100 PCIe"),
              ("V100", "V100 SXM2"))


def gpu_model_key(device_name: str) -> Optional[str]:
    """The PEAK_DENSE_TFLOPS key for a CUDA device name, or None when unknown."""
    return next((key for pattern, key in _GPU_NAMES if re.search(pattern, device_name.upper())), None)


def peak_tflops(gpu_key: Optional[str], precision: str) -> Optional[float]:
    """Peak dense TFLOP/s of ``gpu_key`` in ``precision`` (bf16, fp16, tf32, fp32), or None."""
    return PEAK_DENSE_TFLOPS.get(gpu_key, {}).get(precision)
