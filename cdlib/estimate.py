"""How long a recipe takes on a GPU: wall time projected from counted FLOPs.

``recipe_time(cfg, gpu="T4")`` counts the FLOPs of one training step of the
teacher and of each method's distillation step (:mod:`cdlib.flops`: the real
models on the meta device, an exact count), multiplies by the images a run sees
(``epochs`` x the training set, plus one test pass per epoch) and divides by the
GPU's dense peak times an assumed utilisation (15 % of dense peak by default):

    seconds = FLOPs / (peak TFLOP/s x 1e12 x utilisation)

This is an estimate, not a measurement: the optimizer, BatchNorm and the data
pipeline are not counted; the utilisation has to absorb them. What a run in
progress shows (its time left, measured) is in :mod:`cdlib.progress`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import recipes
from . import terms as term_table
from .errors import ConfigError
from .flops import DEFAULT_ASSUMED_UTILISATION, model_flops, peak_tflops, step_flops
from .recipes import RunConfig

__all__ = ["GPUS", "recipe_time", "format_estimate", "chapter_line", "duration"]

# The --gpu names: the key of the peak table in cdlib.flops and the precision
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


def _data_facts(cfg: RunConfig) -> Tuple[int, int, int, int]:
    """(train images, test images, image side, classes) of ``cfg``'s data set."""
    if cfg.data in _KNOWN_SETS:
        train, test, size, classes = _KNOWN_SETS[cfg.data]
        if cfg.data == "imagenet" and cfg.image_size:
            size = cfg.image_size
        return train, test, size, classes
    from . import data

    # The small sets live in memory and load in a second.
    bundle = data.load(cfg.data, root=cfg.data_root, image_size=cfg.image_size, **cfg.data_options)
    return len(bundle.train), len(bundle.test), bundle.image_size, bundle.num_classes


def _precision(gpu: str, amp: str) -> Tuple[str, str, float]:
    """(peak-table key, precision, peak TFLOP/s) of ``gpu`` under the recipe's ``amp``."""
    if gpu not in GPUS:
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


def _methods(cfg: RunConfig, methods) -> List[str]:
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
    methods = _methods(cfg, methods)
    gpu = gpu.upper() if isinstance(gpu, str) else gpu  # "t4" is the T4
    key, precision, peak = _precision(gpu, cfg.amp)
    flops_per_second = peak * 1e12 * utilisation
    train_images, test_images, image_size, classes = _data_facts(cfg)
    if cfg.max_steps_per_epoch is not None:
        train_images = min(train_images, cfg.max_steps_per_epoch * cfg.batch_size)
    student_forward = model_flops(cfg.student, image_size, classes)[0]

    def timed(flops: float) -> Dict[str, float]:
        return {"flops": flops, "seconds": flops / flops_per_second}

    students = []
    uses_teacher = False
    for method in methods:
        loss_terms = recipes.parse_method(method)
        step = step_flops(cfg.student, cfg.teacher, loss_terms, image_size, classes)
        flops = cfg.epochs * (train_images * step + test_images * student_forward)
        if term_table.needs_teacher(loss_terms):
            uses_teacher = True
            flops += test_images * model_flops(cfg.teacher, image_size, classes)[0]  # its test pass at the start
        students.append({"method": method, "flops_per_image": step, **timed(flops)})

    teacher = {"model": cfg.teacher, "trained": False, "flops": 0.0, "seconds": 0.0}
    if not uses_teacher:
        teacher["reason"] = "no method needs a teacher"
    elif cfg.teacher_pretrained or cfg.teacher_checkpoint:
        teacher["reason"] = "pretrained weights" if cfg.teacher_pretrained else f"checkpoint {cfg.teacher_checkpoint}"
    else:
        forward, train = model_flops(cfg.teacher, image_size, classes)
        teacher.update(trained=True, flops_per_image=train,
                       **timed(cfg.epochs * (train_images * train + test_images * forward)))
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


def _method_list(methods: Iterable[str]) -> str:
    counts = Counter(methods)
    return ", ".join(m if n == 1 else f"{m} x{n}" for m, n in counts.items())


def chapter_line(recipe: str, methods: Union[str, Sequence[str]], paper_recipe: str = "cifar100",
                 gpus: Sequence[str] = ("T4", "H100"), epochs: Optional[int] = None) -> str:
    """The sentence a chapter shows at its top: its default run's projected time on
    ``gpus`` (teacher training included) and the paper's recipe's on the first of them."""
    cfg = recipes.get(recipe) if epochs is None else recipes.get(recipe, epochs=epochs)
    listed = _methods(cfg, methods)
    times = [recipe_time(cfg, gpu, listed) for gpu in gpus]
    paper = recipe_time(recipes.get(paper_recipe), gpus[0], listed)
    on = ", ".join(f"{duration(t['total_seconds'])} on {_article(g)} {g}" for g, t in zip(gpus, times))
    return (f"Default run (recipe {recipe}, methods {_method_list(listed)}, teacher training included): "
            f"about {on} (estimate: counted FLOPs at {100 * times[0]['utilisation']:.0f} % of peak). "
            f"The paper's recipe: {duration(paper['total_seconds'])} on {_article(gpus[0])} {gpus[0]}.")


def _article(gpu: str) -> str:
    return "an" if gpu[:1] in "AEFHILMNORSX" else "a"
