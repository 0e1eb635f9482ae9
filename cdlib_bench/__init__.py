"""Distillation throughput: cdlib's training step against a reference-style one.

A package beside :mod:`cdlib`: it imports cdlib, and cdlib never imports it.

``run_benchmark(BenchConfig(...))`` measures images/s of one distillation
step (teacher forward, student forward + backward, connectors, optimizer) for
two configurations in the same process, alternating short timed windows so
that noise from a busy machine hits both alike:

* ``ours``: :class:`cdlib.step.TrainStep` with a :class:`cdlib.distiller.Distiller`
  (teacher in eval mode under ``no_grad``, zero-weight losses skipped), AMP per
  :func:`cdlib.device.amp_dtype`, ``channels_last`` and fused SGD on CUDA,
  optional ``torch.compile``, batches from :class:`cdlib.data.DeviceLoader`
  (uint8 images resident on the device, augmented a batch at a time there);
* ``reference_style``: the same models and batch done the way the paper's
  reference code did it, written here from its description (``paper.md``):
  fp32, the frozen teacher left in train mode (BatchNorm batch statistics,
  drifting running statistics), every loss term computed even at weight 0,
  and a CPU ``DataLoader`` with ``min(4, cpu count)`` worker processes
  applying PIL transforms (reflect-pad 4, random crop 32, flip).

It also counts model FLOPs (:mod:`cdlib_bench.flops`: ``torch.utils.flop_counter`` on
the meta device, exact, and free even for ResNet152), reports achieved FLOP/s
and peak memory, and projects the paper's CIFAR-100 recipe (ResNet152 ->
ResNet50, 200 epochs x 50,000 images) onto a T4 and an H100 from FLOPs — a
FLOP-based estimate, not a measurement — and, on a GPU, from the measured
images/s. ``benchmarks/distill_throughput.py`` is the command line;
``notebooks/05_speed.ipynb`` the book chapter.

The modules, by concept: :mod:`.config` (what to measure, the paper's recipe),
:mod:`.projection` (the step's FLOPs and the recipe they project), :mod:`.steps`
(the two training steps and the reference's PIL data), :mod:`.pipelines` (a
step fed by its loader), :mod:`.memory` (the fresh-process memory probe),
:mod:`.measurement` (``run_benchmark``: warm-up, timed windows, the result),
:mod:`.results` (result files, tables, plots, summaries), :mod:`.flops` (FLOPs
counted on the meta device, the GPU peak table), :mod:`.estimate` (a recipe's
wall time projected from counted FLOPs), :mod:`.timing` (a recipe's training
steps timed here and its wall time projected from them; the chapters' "Time"
line) and :mod:`.command` (``cdlib estimate`` and ``cdlib measure``, found by
cdlib's command line through the ``cdlib.commands`` entry point).
"""

from __future__ import annotations

from .config import (
    ABLATIONS,
    CIFAR_CLASSES,
    CIFAR_IMAGE_SIZE,
    CIFAR_TRAIN_IMAGES,
    CONFIGURATIONS,
    PAPER_BATCH,
    PAPER_EPOCHS,
    PAPER_STUDENT,
    PAPER_TEACHER,
    BenchConfig,
)
from .measurement import run_benchmark
from .memory import measure_cpu_memory
from .projection import PROJECTION_GPUS, count_step_flops, project_recipe
from .results import (
    REQUIRED_CONFIGURATION_KEYS,
    REQUIRED_RESULT_KEYS,
    RESULT_SCHEMA_VERSION,
    ablation_effects,
    default_result_path,
    find_results_dir,
    format_projection,
    format_summary,
    load_results,
    plot_throughput,
    results_table,
    save_result,
)
from .steps import PilImageSet, ReferenceStyleStep, pil_image_set, reference_train_transform

__all__ = [
    # what to measure
    "BenchConfig", "CONFIGURATIONS", "ABLATIONS",
    "PAPER_TEACHER", "PAPER_STUDENT", "PAPER_EPOCHS", "PAPER_BATCH",
    "CIFAR_TRAIN_IMAGES", "CIFAR_CLASSES", "CIFAR_IMAGE_SIZE",
    # measuring
    "run_benchmark", "measure_cpu_memory",
    "ReferenceStyleStep", "PilImageSet", "pil_image_set", "reference_train_transform",
    # FLOPs of the step and the projection of the paper's recipe
    "PROJECTION_GPUS", "count_step_flops", "project_recipe",
    # results
    "RESULT_SCHEMA_VERSION", "REQUIRED_RESULT_KEYS", "REQUIRED_CONFIGURATION_KEYS",
    "save_result", "default_result_path", "find_results_dir", "load_results",
    "results_table", "plot_throughput", "format_summary", "format_projection", "ablation_effects",
]
