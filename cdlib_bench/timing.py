"""Training steps timed on the device present, and the wall time projected from them.

``measured_time(cfg)`` is what ``cdlib measure`` prints (:mod:`.command`): it
times a few real training steps of the teacher and of each method on the device
present, CPU or GPU, built as :func:`cdlib.train.fit` builds them (the recipe's
precision, channels-last, data path and ``compile``; a randomly initialised
teacher, whose weights do not change the speed), and projects

    seconds = epochs x (training images / train images/s + test images / test images/s)

(+ one teacher test pass for a method that needs a teacher). CIFAR-100 is timed
on a small synthetic archive in its file format, read by the same loader.
Checkpoint saves, logging and start-up are not counted. :func:`chapter_line` (a
chapter's "Time" line) uses it on a GPU, and :data:`CHAPTERS` lists what each
chapter runs. The FLOP-based estimate beside it is cdlib's: :mod:`cdlib_bench.estimate`.
"""

from __future__ import annotations

import itertools
import math
import pickle
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from cdlib import checkpoint as ckpt
from cdlib import parts as parts_mod
from cdlib import recipes
from cdlib import terms as term_table
from cdlib.data import DeviceLoader
from cdlib.device import name as device_name
from cdlib.device import pick_device
from cdlib.distributed import Placement
from cdlib.errors import CDLibError, ConfigError, is_whole
from cdlib.parts import weights_for
from cdlib.recipes import RunConfig
from cdlib.step import TrainStep, evaluate

from .estimate import data_facts, duration, listed_methods, recipe_time, teacher_reason
from .flops import gpu_model_key, model_flops, peak_tflops, step_flops
from .pipelines import synchronize

__all__ = ["CHAPTERS", "MEASURE_STEPS", "CHAPTER_MEASURE_STEPS", "chapter_line", "measure", "measured_time",
           "format_measured", "chapter_times", "format_chapters", "measured_report", "write_synthetic_cifar100",
           "precision_name"]

# What each chapter's default run trains (its notebook's RECIPE and METHODS; a teacher first):
# the runs its "Time" line and benchmarks/gpu_check.py project. tests/test_estimate.py checks
# them against the notebooks.
CHAPTERS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "01_channel_attention": ("cifar100-colab", ("student", "cd")),
    "02_gkd_vs_kd": ("cifar100-colab", ("student", "kd", "gkd", "cd", "cd+gkd", "cd+gkd+edt")),
    "03_edt_schedules": ("cifar100-colab", ("cd+gkd+edt",) * 4),  # one run per EDT schedule, same cost
    "04_reproduce_cifar100": ("cifar100-colab", ("student", "kd", "cd", "cd+gkd", "cd+gkd+edt")),
}
# Timed steps per teacher / method: `cdlib measure`'s default, and a chapter's "Time" line on a GPU.
MEASURE_STEPS = {"cuda": 10, "mps": 10, "cpu": 3}
CHAPTER_MEASURE_STEPS = 5


def _method_list(methods: Iterable[str]) -> str:
    counts = Counter(methods)
    return ", ".join(m if n == 1 else f"{m} x{n}" for m, n in counts.items())


def chapter_line(recipe: str, methods: Union[str, Sequence[str]], paper_recipe: str = "cifar100",
                 gpus: Sequence[str] = ("T4", "H100"), epochs: Optional[int] = None,
                 measure: Union[str, bool] = "auto", steps: Optional[int] = None) -> str:
    """The sentence a chapter shows at its top: its default run's projected time on
    ``gpus`` (teacher training included) and the paper's recipe's on the first of them.

    ``measure="auto"`` (the default) also times ``steps`` real training steps of the
    teacher and of each method (:func:`measured_time`, a few seconds) when the recipe's
    device is a GPU, and leads with that measured time; ``True`` measures on any device,
    ``False`` never. The paper's recipe stays a FLOP-based estimate."""
    if measure not in ("auto", True, False):
        raise ConfigError(f"measure is 'auto', True or False, got {measure!r}.")
    cfg = recipes.get(recipe) if epochs is None else recipes.get(recipe, epochs=epochs)
    listed = listed_methods(cfg, methods)
    times = [recipe_time(cfg, gpu, listed) for gpu in gpus]
    paper = recipe_time(recipes.get(paper_recipe), gpus[0], listed)
    on = ", ".join(f"{duration(t['total_seconds'])} on {_article(g)} {g}" for g, t in zip(gpus, times))
    share = f"{100 * times[0]['utilisation']:.0f} % of peak"
    head = f"Default run (recipe {recipe}, methods {_method_list(listed)}, teacher training included): "
    tail = f"The paper's recipe: {duration(paper['total_seconds'])} on {_article(gpus[0])} {gpus[0]}"
    measured, failure = None, None
    if measure is True or (measure == "auto" and _device_type(cfg.device) == "cuda"):
        try:
            measured = measured_time(cfg, listed, steps=steps or CHAPTER_MEASURE_STEPS)
        except (CDLibError, torch.cuda.OutOfMemoryError) as exc:  # the line never stops a chapter
            failure = str(exc).splitlines()[0][:200]
    if measured is None:
        note = f" (measuring failed: {failure})" if failure else ""
        return f"{head}about {on} (estimate: counted FLOPs at {share}){note}. {tail}."
    m = measured["measurement"]
    return (f"{head}about {duration(measured['total_seconds'])} {m['label']} ({m['steps']} training steps of each "
            f"timed just now); from counted FLOPs at {share}: {on}. {tail} (estimate).")


def _device_type(preference: str) -> str:
    try:
        return pick_device(preference).type
    except ConfigError:
        return "none"


def _article(gpu: str) -> str:
    return "an" if gpu[:1] in "AEFHILMNORSX" else "a"


# ------------------------------------------------------------------ measured


def write_synthetic_cifar100(root: Union[str, Path], train_images: int, test_images: int, seed: int = 0) -> Path:
    """A CIFAR-100 archive (``root/cifar-100-python/{train,test,meta}``, the real files' format, read by
    the same loader) of synthetic 32x32 images: 100 smooth class prototypes plus noise, learnable, so a
    short run's accuracy rises above chance. Returns ``root``; written a few thousand images at a time."""
    for name, value in (("train_images", train_images), ("test_images", test_images)):
        if not is_whole(value) or value < 1:
            raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}.")
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    prototypes = F.interpolate(torch.rand(100, 3, 4, 4, generator=g), size=(32, 32), mode="bilinear",
                               align_corners=False)

    def split(n: int) -> dict:
        labels = torch.randint(0, 100, (n,), generator=g)
        rows = []
        for chunk in labels.split(4096):
            images = (prototypes[chunk] + 0.25 * torch.randn(len(chunk), 3, 32, 32, generator=g)).clamp(0, 1)
            rows.append((images * 255).round().to(torch.uint8).reshape(len(chunk), -1).numpy())
        return {"data": np.concatenate(rows), "fine_labels": labels.tolist(), "coarse_labels": [0] * n}

    meta = {"fine_label_names": [f"class {i}" for i in range(100)], "coarse_label_names": ["all"] * 20}
    for name, obj in (("train", split(train_images)), ("test", split(test_images)), ("meta", meta)):
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=4)
    return Path(root)


def _whole(value, name: str, least: int = 1) -> None:
    if value is not None and (not is_whole(value) or value < least):
        raise ConfigError(f"{name} must be a whole number of at least {least}, got {value!r}.")


def _endless(loader) -> Iterator:
    """A loader's batches over epoch after epoch (a short data set and many steps)."""
    for epoch in itertools.count(1):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader


def precision_name(dtype, device) -> str:
    """bf16, fp16, tf32 or fp32: what a step under autocast ``dtype`` (None: off) computes in on ``device``."""
    if dtype is not None:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    tf32 = (device.type == "cuda" and torch.backends.cudnn.allow_tf32
            and torch.cuda.get_device_capability(device)[0] >= 8)
    return "tf32" if tf32 else "fp32"


def _measurement_config(cfg: RunConfig, folder: Path, train_needed: int, test_images: Optional[int],
                        eval_batches: int) -> Tuple[RunConfig, str]:
    """``cfg`` made to time in ``folder``: no run folder of the user's is touched, no download, no
    teacher file needed; CIFAR-100 replaced by a synthetic archive in its format. And the data, in words."""
    changes = dict(run_dir=str(folder / "runs"), resume=False, progress=False, download=False,
                   teacher_checkpoint=None, teacher_pretrained=False, max_steps_per_epoch=None)
    if cfg.data == "cifar100":
        test = test_images or eval_batches * max(cfg.batch_size, 256)
        write_synthetic_cifar100(folder / "data", max(train_needed, cfg.batch_size), test)
        changes["data_root"] = str(folder / "data")
        what = f"synthetic CIFAR-100-format images ({max(train_needed, cfg.batch_size):,} train, {test:,} test)"
    elif cfg.data == "imagenet":
        what = f"ImageNet from {cfg.data_root}"
    else:
        what = f"{cfg.data} images"
    return cfg.replace(**changes), what


def _loader_words(loader) -> str:
    if isinstance(loader, DeviceLoader):
        return f"in memory on the {loader.device.type.upper()} (DeviceLoader)"
    return f"DataLoader with {getattr(loader, 'num_workers', 0)} workers"


def _counted(batches: Iterable, counter: List[int]) -> Iterator:
    for images, labels in batches:
        counter[0] += len(labels)
        yield images, labels


def _time_role(cfg: RunConfig, place, steps: int, warmup: int, eval_batches: int,
               eval_speeds: Dict[str, float]) -> Tuple[dict, object]:
    """Time ``steps`` training steps of ``cfg.method`` (student ``cfg.student``) after ``warmup`` steps,
    built as fit() builds them; and the test pass's images/s of the model, once per model name."""
    device = place.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    loss_terms = recipes.parse_method(cfg.method)
    parts = parts_mod.build(cfg, place, loss_terms)
    if cfg.compile:
        parts.distiller.student.compile()
        if parts.teacher is not None:
            parts.teacher.compile()
    step = TrainStep(parts.distiller, parts.distiller.terms, parts.optimizer, parts.scaler, device,
                     parts.autocast_dtype, cfg.channels_last)
    # Mid-run weights: after EDT's warm-up every term is on, as in most of a run's steps.
    weights = weights_for(cfg, loss_terms, 1 + cfg.epochs // 2, parts.schedule)
    batches = _endless(parts.train_loader)
    for _ in range(warmup):
        step(*next(batches), weights)
    synchronize(device)
    images, sums = 0, None
    started = time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        stats = step(x, y, weights)
        sums = stats if sums is None else sums + stats
        images += len(y)
    synchronize(device)
    seconds = time.perf_counter() - started
    student = cfg.student
    if student not in eval_speeds:
        model, count = parts.distiller.student, [0]
        evaluate(model, itertools.islice(_endless(parts.test_loader), 1), device, parts.autocast_dtype, 1,
                 parts.channels_last)  # warm-up (cuDNN picks its algorithms for the test batch)
        synchronize(device)
        began = time.perf_counter()
        evaluate(model, _counted(itertools.islice(_endless(parts.test_loader), eval_batches), count), device,
                 parts.autocast_dtype, 1, parts.channels_last)
        eval_speeds[student] = count[0] / max(time.perf_counter() - began, 1e-9)
    image_size, classes = parts.bundle.image_size, parts.bundle.num_classes
    if cfg.method == "student":
        flops = model_flops(student, image_size, classes)[1]
    else:
        flops = step_flops(student, cfg.teacher, loss_terms, image_size, classes)
    speed = images / max(seconds, 1e-9)
    row = {
        "model": student, "train_images_per_s": speed, "test_images_per_s": eval_speeds[student],
        "timed_steps": steps, "timed_images": images, "seconds": seconds, "flops_per_image": flops,
        "achieved_tflops": flops * speed / 1e12, "losses_finite": bool(torch.isfinite(sums).all()),
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
    facts = dict(precision=precision_name(parts.autocast_dtype, device), channels_last=parts.channels_last,
                 loader=_loader_words(parts.train_loader), image_size=image_size, num_classes=classes)
    return row, (parts, facts)


def measure(cfg: Union[RunConfig, str], methods: Union[str, Sequence[str], None] = None, steps: Optional[int] = None,
            warmup: Optional[int] = None, eval_batches: Optional[int] = None, test_images: Optional[int] = None,
            log: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Images/s of ``cfg``'s teacher training step (when a method needs a teacher) and of each distinct
    method's step, timed over ``steps`` steps after ``warmup`` on ``cfg.device``, and of each model's test
    pass over ``eval_batches`` batches. ``test_images`` sizes the synthetic CIFAR-100 test split (default
    ``eval_batches`` full test batches). See the module text; :func:`measured_time` projects from it."""
    if isinstance(cfg, str):
        cfg = recipes.get(cfg)
    methods = listed_methods(cfg, methods)
    for value, label in ((steps, "steps"), (warmup, "warmup"), (eval_batches, "eval_batches"),
                         (test_images, "test_images")):
        _whole(value, label, least=0 if label == "warmup" else 1)
    device = pick_device(cfg.device)
    steps = steps or MEASURE_STEPS.get(device.type, 3)
    warmup = (2 if device.type == "cuda" else 1) + (1 if cfg.compile else 0) if warmup is None else warmup
    eval_batches = eval_batches or max(1, math.ceil(steps / 4))
    say = log or (lambda message: None)
    uses_teacher = any(term_table.needs_teacher(recipes.parse_method(m)) for m in methods)
    place = Placement(0, 1, device)
    rows: Dict[str, dict] = {}
    eval_speeds: Dict[str, float] = {}
    teacher_row, facts = None, {}
    with tempfile.TemporaryDirectory(prefix="cdlib-measure-") as tmp:
        folder = Path(tmp)
        base, data_words = _measurement_config(cfg, folder, (steps + warmup) * cfg.batch_size, test_images,
                                               eval_batches)
        teacher_file = folder / "teacher.pt"
        if uses_teacher:
            say(f"timing {steps} steps of the teacher {cfg.teacher} on {device_name(device)} ...")
            teacher_row, (parts, facts) = _time_role(base.replace(student=cfg.teacher, method="student"), place,
                                                     steps, warmup, eval_batches, eval_speeds)
            # Its random weights serve as the distillations' teacher: speed does not depend on them.
            ckpt.save_model(parts.distiller.student, teacher_file, cfg.teacher, parts.bundle.num_classes)
            del parts
        for method in dict.fromkeys(methods):
            say(f"timing {steps} steps of {method} ...")
            needs = term_table.needs_teacher(recipes.parse_method(method))
            role = base.replace(method=method, teacher_checkpoint=str(teacher_file) if needs else None)
            rows[method], (parts, facts) = _time_role(role, place, steps, warmup, eval_batches, eval_speeds)
            del parts
    if device.type == "cuda":
        torch.cuda.empty_cache()
    key = gpu_model_key(device_name(device)) if device.type == "cuda" else None
    peak = peak_tflops(key, facts["precision"])
    for row in [teacher_row, *rows.values()]:
        if row is not None:
            row["share_of_dense_peak"] = row["achieved_tflops"] / peak if peak else None
    return {
        "label": f"measured on {device_name(device)}",
        "device": device_name(device), "device_type": device.type, "gpu_peak_key": key, "peak_tflops": peak,
        "precision": facts["precision"], "channels_last": facts["channels_last"], "compile": cfg.compile,
        "data": data_words, "loader": facts["loader"], "batch_size": cfg.batch_size,
        "student": cfg.student, "teacher": cfg.teacher if uses_teacher else None,
        "steps": steps, "warmup_steps": warmup, "eval_batches": eval_batches, "weights_epoch": 1 + cfg.epochs // 2,
        "teacher_row": teacher_row, "methods": rows, "test_images_per_s": eval_speeds,
    }


def measured_time(cfg: Union[RunConfig, str], methods: Union[str, Sequence[str], None] = None,
                  measurement: Optional[Dict[str, object]] = None, **measure_options) -> Dict[str, object]:
    """Projected wall time of ``cfg``'s teacher and of each method from measured images/s: a
    :func:`measure` result given as ``measurement`` (for the same student, teacher and batch), or one
    made now with ``measure_options``. Same shape as :func:`recipe_time`'s result, with the speeds."""
    if isinstance(cfg, str):
        cfg = recipes.get(cfg)
    methods = listed_methods(cfg, methods)
    m = measurement if measurement is not None else measure(cfg, methods, **measure_options)
    missing = [method for method in dict.fromkeys(methods) if method not in m["methods"]]
    uses_teacher = any(term_table.needs_teacher(recipes.parse_method(x)) for x in methods)
    if missing or m["student"] != cfg.student or (uses_teacher and m["teacher"] != cfg.teacher):
        raise ConfigError(f"the measurement timed {m['student']} (teacher {m['teacher']}) for "
                          f"{', '.join(m['methods'])}; it cannot project {cfg.student} (teacher {cfg.teacher}) "
                          f"for {', '.join(methods)}: measure those.")
    train_images, test_images, _, _ = data_facts(cfg)
    test_speed = m["test_images_per_s"]
    students = []
    for method in methods:
        row = m["methods"][method]
        seconds = cfg.epochs * (train_images / row["train_images_per_s"] + test_images / test_speed[cfg.student])
        if term_table.needs_teacher(recipes.parse_method(method)):
            seconds += test_images / test_speed[cfg.teacher]  # its test pass at the start
        students.append({"method": method, "train_images_per_s": row["train_images_per_s"],
                         "achieved_tflops": row["achieved_tflops"], "seconds": seconds})
    reason = teacher_reason(cfg, methods)
    teacher = {"model": cfg.teacher, "trained": reason is None, "seconds": 0.0}
    if reason:
        teacher["reason"] = reason
    else:
        row = m["teacher_row"]
        teacher.update(train_images_per_s=row["train_images_per_s"],
                       test_images_per_s=test_speed[cfg.teacher], achieved_tflops=row["achieved_tflops"],
                       seconds=cfg.epochs * (train_images / row["train_images_per_s"]
                                             + test_images / test_speed[cfg.teacher]))
    return {
        "label": m["label"], "measurement": m, "data": cfg.data, "epochs": cfg.epochs,
        "train_images": train_images, "test_images": test_images, "student_model": cfg.student,
        "teacher": teacher, "students": students,
        "total_seconds": teacher["seconds"] + sum(s["seconds"] for s in students),
    }


def format_measured(measured: Dict[str, object], estimates: Sequence[Dict[str, object]] = ()) -> str:
    """A :func:`measured_time` result as lines, beside the FLOP-based ``estimates`` (recipe_time results)."""
    m = measured["measurement"]
    peak = m["peak_tflops"]
    lines = [
        f"Projected wall time, {m['label']}",
        f"  {m['steps']} timed training steps per row after {m['warmup_steps']} warm-up, batch {m['batch_size']}, "
        f"{m['precision']}, channels-last {'on' if m['channels_last'] else 'off'}"
        f"{', compiled' if m['compile'] else ''}",
        f"  {m['data']}, {m['loader']}; loss weights of epoch {m['weights_epoch']}",
    ]
    unit, scale = ("TFLOP/s", 1.0) if m["device_type"] == "cuda" else ("GFLOP/s", 1e3)
    flop_titles = "".join(f"  {'FLOP est. ' + e['gpu']:>14}" for e in estimates)
    lines.append(f"  {'':<36}{'train img/s':>12}{'test img/s':>12}{unit:>9}"
                 f"{'% peak' if peak else '':>7}  {'projected':<10}{flop_titles}")

    def row(title: str, speed: Optional[float], test: Optional[float], tflops: Optional[float], seconds: float,
            flop_seconds: Sequence[Optional[float]]) -> str:
        def number(v: Optional[float], width: int, fmt: str) -> str:
            return f"{v:>{width}{fmt}}" if v is not None else f"{'':>{width}}"

        share = number(tflops / peak * 100, 7, ".1f") if peak and tflops is not None else f"{'':>7}"
        estimated = "".join(f"  {('~' + duration(s)) if s is not None else 'n/a':>14}" for s in flop_seconds)
        achieved = None if tflops is None else tflops * scale
        return (f"  {title:<36}{number(speed, 12, ',.1f')}{number(test, 12, ',.1f')}{number(achieved, 9, '.3g')}"
                f"{share}  {'~' + duration(seconds):<10}{estimated}")

    teacher = measured["teacher"]
    if teacher["trained"]:
        lines.append(row(f"teacher {teacher['model']}", teacher["train_images_per_s"], teacher["test_images_per_s"],
                         teacher["achieved_tflops"], teacher["seconds"],
                         [e["teacher"]["seconds"] for e in estimates]))
    else:
        lines.append(f"  teacher {teacher['model']:<28} not trained ({teacher['reason']})")
    test = m["test_images_per_s"][measured["student_model"]]
    for index, s in enumerate(measured["students"]):
        flop = [e["students"][index]["seconds"] if index < len(e["students"]) else None for e in estimates]
        lines.append(row(s["method"], s["train_images_per_s"], test, s["achieved_tflops"], s["seconds"], flop))
    lines.append(row("total", None, None, None, measured["total_seconds"], [e["total_seconds"] for e in estimates]))
    lines.append(f"  projected = {measured['epochs']} epochs x ({measured['train_images']:,} training images / train "
                 f"img/s + {measured['test_images']:,} test images / test img/s)")
    lines.append("  (+ the teacher's test pass for a distillation; checkpoint saves and start-up are not counted)")
    return "\n".join(lines)


def chapter_times(cfg: Union[RunConfig, str, None] = None, gpus: Sequence[str] = ("T4", "H100"),
                  measurement: Optional[Dict[str, object]] = None, **measure_options) -> Dict[str, dict]:
    """Each chapter's default run (:data:`CHAPTERS`, teacher training included) projected from measured
    images/s (one :func:`measure` of every method the chapters use, on ``cfg``: default the chapters'
    recipe) and, beside it, from counted FLOPs on ``gpus``."""
    recipe_names = {recipe for recipe, _ in CHAPTERS.values()}
    if cfg is None or isinstance(cfg, str):
        cfg = recipes.get(cfg or next(iter(recipe_names)))
    union = list(dict.fromkeys(m for _, listed in CHAPTERS.values() for m in listed))
    if measurement is None:
        measurement = measure(cfg, union, **measure_options)
    out = {}
    for chapter, (_, listed) in CHAPTERS.items():
        measured = measured_time(cfg, list(listed), measurement=measurement)
        out[chapter] = {
            "methods": list(listed), "seconds": measured["total_seconds"], "label": measured["label"],
            "teacher_seconds": measured["teacher"]["seconds"],
            "flop_estimate_seconds": {gpu: recipe_time(cfg, gpu, list(listed))["total_seconds"] for gpu in gpus},
        }
    return out


def format_chapters(times: Dict[str, dict]) -> str:
    """A :func:`chapter_times` result as lines, one per chapter."""
    lines = ["Chapters (their default runs, teacher training included):"]
    for chapter, t in times.items():
        flops = ", ".join(f"~{duration(s)} on {_article(g)} {g}" for g, s in t["flop_estimate_seconds"].items())
        lines.append(f"  {chapter:<24} ~{duration(t['seconds']):<8} {t['label']}   (FLOP estimate: {flops}; "
                     f"methods {_method_list(t['methods'])})")
    return "\n".join(lines)


def measured_report(cfg: RunConfig, recipe: Optional[str] = None, steps: Optional[int] = None,
                    estimates: Sequence[Dict[str, object]] = (), log: Optional[Callable[[str], None]] = None) -> str:
    """What ``cdlib measure`` prints: ``cfg``'s teacher and methods projected from measured speed, beside
    the FLOP-based ``estimates`` (recipe_time results), and, for the chapters' recipe, every chapter too."""
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    chapters = recipe in {r for r, _ in CHAPTERS.values()}
    methods = listed_methods(cfg, None)
    timed = list(dict.fromkeys(methods + ([m for _, listed in CHAPTERS.values() for m in listed] if chapters else [])))
    measurement = measure(cfg, timed, steps=steps, log=say)
    text = format_measured(measured_time(cfg, methods, measurement=measurement), estimates)
    if chapters:
        gpus = [e["gpu"] for e in estimates] or ["T4"]
        text += "\n" + format_chapters(chapter_times(cfg, gpus, measurement=measurement))
    return text
