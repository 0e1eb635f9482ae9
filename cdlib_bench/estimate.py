"""How long a recipe takes on a GPU: wall time projected from counted FLOPs.

``recipe_time(cfg, gpu="T4")`` counts the FLOPs of one training step of the
teacher and of each method's distillation step (:mod:`cdlib_bench.flops`: the real
models on the meta device, an exact count), multiplies by the images a run sees
(``epochs`` x the training set, plus one test pass per epoch) and divides by the
GPU's dense peak times an assumed utilisation (15 % of dense peak by default):

    seconds = FLOPs / (peak TFLOP/s x 1e12 x utilisation)

This is an estimate, not a measurement: the optimizer, BatchNorm and the data
pipeline are not counted; the utilisation has to absorb them. What a run in
progress shows (its time left, measured) is in :mod:`cdlib.train`; timing
real steps before a run (``cdlib measure``, the chapters' "Time" line) is
benchmark work, in :mod:`cdlib_bench.timing`.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

from cdlib import recipes
from cdlib import terms as term_table
from cdlib.errors import ConfigError
from cdlib.recipes import RunConfig

from .flops import DEFAULT_ASSUMED_UTILISATION, model_flops, peak_tflops, step_flops

__all__ = ["GPUS", "recipe_time", "format_estimate", "duration", "data_facts", "listed_methods", "teacher_reason"]

# The --gpu names: the key of the peak table in cdlib_bench.flops and the precision
# amp="auto" trains in there (the T4 has fp16 tensor cores but no bf16 ones).
GPUS: Dict[str, Tuple[str, str]] = {
    "T4": ("T4", "fp16"),
    "L4": ("L4", "bf16"),
    "A100": ("A100", "bf16"),
    "H100": ("H100 SXM", "bf16"),
}
LABEL = "estimate: counted FLOPs at {:.0f} % of dense peak, not a measurement"

# (train images, test images, image side, classes) of the data sets whose files may be absent here.
_KNOWN_SETS = {
    "cifar100": (50_000, 10_000, 32, 100),
    "imagenet": (1_281_167, 50_000, 224, 1000),  # ILSVRC-2012 train / val
}


# ------------------------------------------------------------------ the run


def data_facts(cfg: RunConfig) -> Tuple[int, int, int, int]:
    """(training images an epoch sees, test images, image side, classes) of ``cfg``'s data set."""
    if cfg.data in _KNOWN_SETS:
        train, test, size, classes = _KNOWN_SETS[cfg.data]
        if cfg.data == "imagenet" and cfg.image_size:
            size = cfg.image_size
    else:
        from cdlib import data

        # The small sets live in memory and load in a second.
        bundle = data.load(cfg.data, root=cfg.data_root, image_size=cfg.image_size, **cfg.data_options)
        train, test, size, classes = len(bundle.train), len(bundle.test), bundle.image_size, bundle.num_classes
    if cfg.max_steps_per_epoch is not None:
        train = min(train, cfg.max_steps_per_epoch * cfg.batch_size)
    return train, test, size, classes


def _precision(gpu: str, amp: str) -> Tuple[str, str, float]:
    """(peak-table key, precision, peak TFLOP/s) of ``gpu`` under the recipe's ``amp``."""
    if not isinstance(gpu, str) or gpu not in GPUS:
        raise ConfigError(f"unknown GPU {gpu!r} for the estimate; choose one of {', '.join(GPUS)}.")
    key, precision = GPUS[gpu]
    if amp in ("bf16", "fp16"):
        precision = amp
    elif amp == "off":  # cuDNN runs fp32 convolutions as TF32 where the GPU has it (PyTorch's default)
        precision = "tf32" if peak_tflops(key, "tf32") else "fp32"
    peak = peak_tflops(key, precision)
    if peak is None:
        raise ConfigError(f"the {gpu} has no {precision} tensor cores, so there is no peak to project from; "
                          f"estimate with amp='auto' (it trains in {GPUS[gpu][1]} there).")
    return key, precision, peak


def listed_methods(cfg: RunConfig, methods: Union[str, Sequence[str], None]) -> List[str]:
    """``methods`` (a ','-separated string or a list; None: ``cfg.method``) as a checked list."""
    if methods is None:
        methods = cfg.method
    if isinstance(methods, str):
        methods = methods.split(",")
    methods = [m.strip() for m in methods if m.strip()]
    if not methods:
        raise ConfigError("no method to estimate; name one, e.g. 'student' or 'cd+gkd+edt'.")
    for method in methods:
        recipes.parse_method(method)
    return methods


def teacher_reason(cfg: RunConfig, methods: Sequence[str]) -> Optional[str]:
    """Why no teacher is trained before ``methods`` run, or None when one is."""
    if not any(term_table.needs_teacher(recipes.parse_method(m)) for m in methods):
        return "no method needs a teacher"
    if cfg.teacher_pretrained:
        return "pretrained weights"
    return f"checkpoint {cfg.teacher_checkpoint}" if cfg.teacher_checkpoint else None


def recipe_time(cfg: Union[RunConfig, str], gpu: str = "T4", methods: Union[str, Sequence[str], None] = None,
                utilisation: float = DEFAULT_ASSUMED_UTILISATION) -> Dict[str, object]:
    """Projected wall time of ``cfg``'s teacher and of each method on ``gpu`` (T4, L4, A100, H100).

    ``cfg`` is a RunConfig or a recipe name; ``methods`` (a ','-separated string or
    a list, repeats allowed: one run each) defaults to ``cfg.method``. The teacher
    counts only when a method needs it and no checkpoint or pretrained weights are
    given; see the module text for the formula.
    """
    if isinstance(cfg, str):
        cfg = recipes.get(cfg)
    if not (isinstance(utilisation, (int, float)) and 0 < utilisation <= 1):
        raise ConfigError(f"utilisation is a share of peak in (0, 1], e.g. 0.15, got {utilisation!r}.")
    methods = listed_methods(cfg, methods)
    gpu = gpu.upper() if isinstance(gpu, str) else gpu  # "t4" is the T4
    key, precision, peak = _precision(gpu, cfg.amp)
    flops_per_second = peak * 1e12 * utilisation
    train_images, test_images, image_size, classes = data_facts(cfg)
    student_forward = model_flops(cfg.student, image_size, classes)[0]

    def timed(flops: float) -> Dict[str, float]:
        return {"flops": flops, "seconds": flops / flops_per_second}

    students = []
    for method in methods:
        loss_terms = recipes.parse_method(method)
        step = step_flops(cfg.student, cfg.teacher, loss_terms, image_size, classes)
        flops = cfg.epochs * (train_images * step + test_images * student_forward)
        if term_table.needs_teacher(loss_terms):
            flops += test_images * model_flops(cfg.teacher, image_size, classes)[0]  # its test pass at the start
        students.append({"method": method, "flops_per_image": step, **timed(flops)})

    reason = teacher_reason(cfg, methods)
    teacher = {"model": cfg.teacher, "trained": reason is None, "flops": 0.0, "seconds": 0.0}
    if reason:
        teacher["reason"] = reason
    else:
        forward, train = model_flops(cfg.teacher, image_size, classes)
        teacher.update(flops_per_image=train, **timed(cfg.epochs * (train_images * train + test_images * forward)))
    return {
        "label": LABEL.format(100 * utilisation),
        "gpu": gpu, "peak_key": key, "precision": precision, "peak_tflops": peak, "utilisation": utilisation,
        "data": cfg.data, "epochs": cfg.epochs, "train_images": train_images, "test_images": test_images,
        "image_size": image_size, "student_model": cfg.student,
        "teacher": teacher, "students": students,
        "total_seconds": teacher["seconds"] + sum(s["seconds"] for s in students),
    }


# ------------------------------------------------------------------ text


def duration(seconds: float) -> str:
    """'40 s', '35 min', '4.8 h', '29 h': the precision an estimate deserves."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration is a finite number of seconds >= 0, got {seconds!r}.")
    if round(seconds) < 60:
        return f"{max(1, round(seconds))} s"
    minutes = seconds / 60
    if round(minutes) < 60:
        return f"{round(minutes)} min"
    hours = minutes / 60
    return f"{hours:.1f} h" if hours < 10 else f"{hours:.0f} h"


def format_estimate(estimate: Dict[str, object], recipe: Optional[str] = None) -> str:
    """The estimate as the lines `cdlib estimate` prints."""
    e = estimate
    title = f"recipe {recipe}: " if recipe else ""
    lines = [
        f"Projected wall time ({e['label']})",
        f"  {title}{e['data']}, {e['epochs']} epochs x {e['train_images']:,} training images "
        f"(+ {e['test_images']:,} test images per epoch), image side {e['image_size']}",
        f"  GPU {e['gpu']} ({e['peak_key']}), {e['precision']}: peak {e['peak_tflops']:g} TFLOP/s, "
        f"assumed utilisation {100 * e['utilisation']:.0f} % -> {e['peak_tflops'] * e['utilisation']:.1f} TFLOP/s",
    ]
    teacher = e["teacher"]
    if teacher["trained"]:
        lines.append(f"  teacher {teacher['model']:<20} {teacher['flops_per_image'] / 1e9:6.2f} GFLOP/image/step  "
                     f"~{duration(teacher['seconds'])}")
    else:
        lines.append(f"  teacher {teacher['model']:<20} not trained ({teacher['reason']})")
    for s in e["students"]:
        lines.append(f"  {s['method']:<28} {s['flops_per_image'] / 1e9:6.2f} GFLOP/image/step  "
                     f"~{duration(s['seconds'])}  (student {e['student_model']})")
    lines.append(f"  total                        ~{duration(e['total_seconds'])}")
    return "\n".join(lines)
