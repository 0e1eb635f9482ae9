"""FLOPs of the benchmarked distillation step, and what they project for the paper's whole recipe.

The counts and the GPU peaks come from :mod:`cdlib_bench.flops` (``torch.utils.flop_counter``
on the meta device; NVIDIA's datasheets). The projection is a FLOP-based
estimate, not a measurement.
"""

from __future__ import annotations

from typing import Dict

from cdlib import terms

from .config import CIFAR_CLASSES, CIFAR_IMAGE_SIZE, CIFAR_TRAIN_IMAGES, PAPER_EPOCHS
from .flops import DEFAULT_ASSUMED_UTILISATION, model_flops, peak_tflops, step_flops

__all__ = ["PROJECTION_GPUS", "count_step_flops", "project_recipe"]

# The GPUs the FLOP-based projection is printed for: Colab's free GPU and the
# usual data-centre one. Ours should run fp16 on the T4 (it has no bf16 tensor
# cores, although torch.cuda.is_bf16_supported() answers True there by emulating
# bf16) and bf16 on the H100; reference-style fp32 convolutions run as TF32 on
# the H100.
PROJECTION_GPUS = {
    "T4": {"ours": "fp16", "reference_style": "fp32"},
    "H100 SXM": {"ours": "bf16", "reference_style": "tf32"},
}


def count_step_flops(teacher: str, student: str, batch_size: int, image_size: int = CIFAR_IMAGE_SIZE,
                     num_classes: int = CIFAR_CLASSES) -> Dict[str, object]:
    """Model FLOPs of one distillation step of the full method (every term of ``terms.SCHEDULED`` on).

    Counted by :func:`cdlib_bench.flops.step_flops` and :func:`cdlib_bench.flops.model_flops`
    per image (exact, and linear in the batch) and multiplied by ``batch_size``.
    The split: teacher forward, student forward (alone), and the rest (student
    backward, connectors forward and backward). The optimizer's element-wise
    update is not a matmul and is not counted.
    """
    total = step_flops(student, teacher, terms.SCHEDULED, image_size, num_classes)
    teacher_forward, teacher_training = model_flops(teacher, image_size, num_classes)
    student_forward = model_flops(student, image_size, num_classes)[0]
    per_image = {
        "total": total,
        "teacher_forward": teacher_forward,
        "student_forward": student_forward,
        "student_backward_and_connectors": total - teacher_forward - student_forward,
    }
    return {
        "teacher": teacher,
        "student": student,
        "batch_size": batch_size,
        "image_size": image_size,
        "per_step": {k: round(v * batch_size) for k, v in per_image.items()},
        "per_image": per_image,
        # Training the teacher itself (cdlib.train.run does it first when no checkpoint is given).
        "teacher_training_per_image": teacher_training,
    }


def project_recipe(flops: Dict[str, object], assumed_utilisation: float = DEFAULT_ASSUMED_UTILISATION,
                   epochs: int = PAPER_EPOCHS, images_per_epoch: int = CIFAR_TRAIN_IMAGES) -> Dict[str, object]:
    """FLOP-based estimate of the wall time of a whole recipe on the PROJECTION_GPUS.

    ``flops`` is what :func:`count_step_flops` returns. time = total FLOPs /
    (peak x assumed utilisation). ``hours_at_peak`` is a hard lower bound;
    ``hours_estimate`` depends on the assumption.
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
