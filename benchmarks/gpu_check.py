#!/usr/bin/env python3
"""One command, one JSON: what a GPU does with cdlib, measured.

    python benchmarks/gpu_check.py                       # one GPU, <= 8 minutes on an H100 (sized down on smaller GPUs)
    python benchmarks/gpu_check.py --device cpu --quick  # the same path on a CPU, tiny sizes (tests/test_gpu_check.py)

It runs, in one process on one device:

1. the throughput benchmark (cdlib_bench.run_benchmark: ours vs the reference-style step,
   alternating windows) on the paper's pair ResNet152 -> ResNet50 at batch 128, without and
   with ``torch.compile`` (--quick: the cifar100-colab pair at a small batch, compile skipped);
2. peak memory: torch.cuda.max_memory_allocated over the whole check (CPU: the process's max RSS);
3. a 2-epoch ``cifar100-colab`` run (teacher, then the student with CD + GKD + EDT) on synthetic
   CIFAR-100-format data kept on the device, then the same student again, stopped by a real SIGTERM
   mid-epoch 2 (cdlib saves a checkpoint at the step boundary) and resumed with resume=True; the
   resumed run's metrics rows (timings left out) and final weights are compared, bit for bit, with
   the uninterrupted run's (on a GPU under torch.use_deterministic_algorithms, warn-only);
4. the paper's recipe (``cifar100``: teacher + CD + GKD + EDT) and each chapter's default run
   (cdlib_bench.timing.CHAPTERS) projected from images/s measured here (cdlib_bench.timing.measured_time,
   the code behind ``cdlib measure``), beside the FLOP-based estimates (cdlib_bench.estimate).

The JSON goes to benchmarks/results/gpu-check/<gpu>-<date>.json (or --output). Its keys:
device, ours_img_s, reference_img_s, ratio (= ours_img_s / reference_img_s), precision,
compile, peak_memory_mb (MiB), run_top1, resume_identical, resume (what was compared),
projected, seconds (per part) and wall_seconds.
"""

from __future__ import annotations

import os

# Before torch starts cuBLAS: deterministic matrix products, so the resume comparison can be bitwise on a GPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import cdlib_bench as bench  # noqa: E402
from cdlib import checkpoint as ckpt  # noqa: E402
from cdlib import device as device_mod  # noqa: E402
from cdlib import recipes, train  # noqa: E402
from cdlib.errors import CDLibError  # noqa: E402
from cdlib.runfolder import CHECKPOINT_FILE  # noqa: E402
from cdlib_bench import (
    estimate,  # noqa: E402
    timing,  # noqa: E402
)
from cdlib_bench.flops import gpu_model_key  # noqa: E402

# A folder of its own: benchmarks/results/*.json are throughput results the speed chapter plots.
RESULTS_DIR = Path(__file__).resolve().parent / "results" / "gpu-check"
REQUIRED_KEYS = ("device", "ours_img_s", "reference_img_s", "ratio", "peak_memory_mb", "run_top1",
                 "resume_identical", "projected")
# Per-epoch fields that are timings, not results: left out of the resume comparison.
TIMING_FIELDS = ("images_per_s", "epoch_seconds")
BIG_GPUS = ("H100 SXM", "H100 PCIe", "H200", "A100")
TINY_MODELS = {"teacher": "cifar_resnet10_w8", "student": "cifar_resnet10_w4"}
RUN_RECIPE, RUN_METHOD = "cifar100-colab", "cd+gkd+edt"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: the same path in a minute or so (CPU tests)")
    ap.add_argument("--train-images", type=int, default=None,
                    help="synthetic training images of the 2-epoch run (default: 50,000 on an H100/H200/A100, "
                         "10,000 on other GPUs, 16 with --quick)")
    ap.add_argument("--batch-size", type=int, default=None, help="batch of the run and the projections "
                    "(default: the recipes' 128; --quick: 8 for the run, 2 for the projections)")
    ap.add_argument("--bench-rounds", type=int, default=None, help="benchmark rounds (default 3; --quick 1)")
    ap.add_argument("--bench-steps", type=int, default=None, help="timed steps per window (default 10; --quick 1)")
    ap.add_argument("--measure-steps", type=int, default=None,
                    help="steps timed per teacher and method for the projections (default 10; --quick 1)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also benchmark with torch.compile (default: on a GPU yes, with --quick on a CPU no)")
    ap.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                    help="deterministic GPU algorithms for the 2-epoch runs (default: on), so the resume "
                         "comparison can be bitwise")
    ap.add_argument("--models", choices=("recipe", "tiny"), default=None,
                    help="recipe: the recipes' models (default on a GPU); tiny: cifar_resnet10_w8 -> "
                         "cifar_resnet10_w4 everywhere, the same path in seconds (default with --quick)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's; --quick on a CPU: 1, fastest on a shared CPU)")
    ap.add_argument("--output", type=Path, default=None,
                    help="JSON file (default: benchmarks/results/gpu-check/<gpu>-<date>.json)")
    ap.add_argument("--no-save", action="store_true", help="print the JSON only")
    args = ap.parse_args(argv)
    args.models = args.models or ("tiny" if args.quick else "recipe")
    if args.quick and args.device == "cpu" and args.threads is None:
        args.threads = 1
    for name in ("train_images", "batch_size", "bench_rounds", "bench_steps", "measure_steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    return args


class Sizes:
    """How big each part is: the GPU defaults, or --quick's tiny ones; options override."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        key = gpu_model_key(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
        quick = args.quick
        self.train_images = args.train_images or (16 if quick else 50_000 if key in BIG_GPUS else 10_000)
        self.test_images = 8 if quick else 10_000
        self.models = dict(TINY_MODELS) if args.models == "tiny" else {}  # teacher / student overrides
        self.run_batch = args.batch_size or (8 if quick else None)  # None: the recipe's 128
        self.measure_batch = args.batch_size or (2 if quick else None)
        self.bench = dict(rounds=args.bench_rounds or (1 if quick else 3),
                          steps_per_round=args.bench_steps or (1 if quick else 10),
                          warmup_steps=1 if quick else 5, settle_steps=0 if quick else 1)
        self.measure_steps = args.measure_steps or (1 if quick else 10)
        self.compile = args.compile if args.compile is not None else (device.type == "cuda")
        colab = recipes.get(RUN_RECIPE)
        # --quick benchmarks the cifar100-colab pair at a small batch; a GPU the paper's pair at its batch.
        pair = (colab.teacher, colab.student) if quick else (bench.PAPER_TEACHER, bench.PAPER_STUDENT)
        self.bench_pair = (self.models["teacher"], self.models["student"]) if self.models else pair
        self.bench_batch = args.batch_size or (8 if quick else bench.PAPER_BATCH)
        self.dataset_size = max(4 * self.bench_batch, 64) if quick else bench.CIFAR_TRAIN_IMAGES

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}


# ------------------------------------------------------------------ 1. the benchmark


def run_bench(args, sizes: Sizes, compile_: bool) -> dict:
    teacher, student = sizes.bench_pair
    cfg = bench.BenchConfig(teacher=teacher, student=student, batch_size=sizes.bench_batch, device=args.device,
                            dataset_size=sizes.dataset_size, compile=compile_, threads=args.threads,
                            # GPU memory is measured in-process for free; a CPU's needs a fresh process per config.
                            measure_memory=args.device != "cpu", **sizes.bench)
    result = bench.run_benchmark(cfg)
    ours, ref = result["configurations"]["ours"], result["configurations"]["reference_style"]
    return {
        "ours_img_s": ours["images_per_s"], "reference_img_s": ref["images_per_s"],
        "ratio": ours["images_per_s"] / ref["images_per_s"],
        "precision": {"ours": ours["precision"], "reference": ref["precision"]},
        "peak_memory_mib": {"ours": ours["peak_memory_mib"], "reference": ref["peak_memory_mib"]},
        "pair": f"{teacher} -> {student}, batch {sizes.bench_batch}", "compiled": compile_,
        "result": result,
    }


# ------------------------------------------------------------------ 3. run, interrupt, resume


class _SigtermAt:
    """fit()'s on_step: send this process a real SIGTERM after step ``step`` of epoch ``epoch``;
    cdlib's handler (cdlib.interrupt) then saves at the step boundary and stops the run."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at, self.sent = (epoch, step), False

    def __call__(self, epoch: int, step: int) -> None:
        if (epoch, step) == self.at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


def _comparable(metrics: list) -> list:
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in metrics]


def run_and_resume(args, sizes: Sizes, folder: Path) -> dict:
    device = torch.device(args.device)
    data_root = timing.write_synthetic_cifar100(folder / "data", sizes.train_images, sizes.test_images, seed=1)
    changes = dict(epochs=2, data_root=str(data_root), run_dir=str(folder / "runs"), device=args.device,
                   progress=False, method=RUN_METHOD, **sizes.models)
    if sizes.run_batch:
        changes["batch_size"] = sizes.run_batch
    cfg = recipes.get(RUN_RECIPE, **changes)
    deterministic = args.deterministic and device.type == "cuda"
    caught = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
        try:
            started = time.perf_counter()
            cfg = train.ensure_teacher(cfg)  # 2 epochs of the teacher, shared by both student runs
            teacher_seconds = time.perf_counter() - started
            whole = train.fit(cfg.replace(run_dir=str(folder / "runs" / "uninterrupted")))
            steps_per_epoch = sizes.train_images // cfg.batch_size
            stop = _SigtermAt(2, max(1, steps_per_epoch // 2))
            cut = cfg.replace(run_dir=str(folder / "runs" / "interrupted"))
            interrupted = False
            try:
                train.fit(cut, on_step=stop)
            except KeyboardInterrupt:
                interrupted = True
            saved = ckpt.safe_load(Path(cut.run_dir) / CHECKPOINT_FILE, "checkpoint")
            resumed = train.fit(cut.replace(resume=True))
        finally:
            if deterministic:
                torch.use_deterministic_algorithms(False)
                torch.backends.cudnn.deterministic = False
        caught = sorted({str(w.message).splitlines()[0][:200] for w in seen
                         if "deterministic" in str(w.message).lower()})
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    same_weights = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    max_diff = max((float((a[k].double() - b[k].double()).abs().max()) for k in a
                    if a[k].is_floating_point() and a[k].numel()), default=0.0)
    rows_a, rows_b = _comparable(whole.metrics), _comparable(resumed.metrics)
    differing = sorted({k for ra, rb in zip(rows_a, rows_b) for k in ra if ra.get(k) != rb.get(k)})
    same_metrics = len(rows_a) == len(rows_b) and not differing
    return {
        "recipe": RUN_RECIPE, "method": RUN_METHOD, "teacher": cfg.teacher, "student": cfg.student, "epochs": 2,
        "batch_size": cfg.batch_size, "train_images": sizes.train_images, "test_images": sizes.test_images,
        "data": "synthetic CIFAR-100-format archive (class prototypes + noise), cdlib's cifar100 loader, "
                f"data_on_device={cfg.data_on_device}",
        "precision": timing.precision_name(device_mod.amp_dtype(device, cfg.amp), device),
        "channels_last": cfg.channels_last and device.type == "cuda",
        "deterministic": deterministic, "determinism_warnings": caught,
        "teacher_top1": whole.teacher_metrics["top1"] if whole.teacher_metrics else None,
        "teacher_seconds": teacher_seconds,
        "uninterrupted_final": whole.final, "resumed_final": resumed.final,
        "interruption": {"signal": "SIGTERM", "sent_after": {"epoch": stop.at[0], "step": stop.at[1]},
                         "stopped": interrupted, "checkpoint_epoch": saved["epoch"], "checkpoint_step": saved["step"]},
        "compared": "every metrics.jsonl row (all fields but " + ", ".join(TIMING_FIELDS) + ") for equality, and "
                    "every tensor of the final student state_dict with torch.equal",
        "same_metrics": same_metrics, "differing_metric_fields": differing,
        "same_weights": same_weights, "max_abs_weight_difference": max_diff,
        "identical": bool(interrupted and same_metrics and same_weights),
    }


# ------------------------------------------------------------------ 4. projections


def projections(args, sizes: Sizes) -> dict:
    changes = dict(device=args.device, **sizes.models)
    if sizes.measure_batch:
        changes["batch_size"] = sizes.measure_batch
    options = dict(steps=sizes.measure_steps)
    if args.quick:
        options.update(warmup=1, eval_batches=1, test_images=sizes.measure_batch or 8)
    gpus = ("T4", "H100")
    paper = recipes.get("cifar100", **changes)
    measured = timing.measured_time(paper, **options)
    flop = {gpu: estimate.recipe_time(paper, gpu) for gpu in gpus}
    paper_out = {
        "recipe": "cifar100", "label": measured["label"], "epochs": measured["epochs"],
        "train_images": measured["train_images"], "test_images": measured["test_images"],
        "test_images_per_s": measured["measurement"]["test_images_per_s"],
        "teacher": measured["teacher"], "students": measured["students"],
        "total_seconds": measured["total_seconds"], "total_hours": measured["total_seconds"] / 3600,
        "flop_estimate_seconds": {gpu: e["total_seconds"] for gpu, e in flop.items()},
        "batch_size": paper.batch_size,
    }
    colab = recipes.get(RUN_RECIPE, **changes)
    union = list(dict.fromkeys(m for _, listed in timing.CHAPTERS.values() for m in listed))
    timed = timing.measure(colab, union, **options)
    chapters = timing.chapter_times(colab, gpus, measurement=timed)
    print(timing.format_measured(measured, list(flop.values())))
    print(timing.format_chapters(chapters))
    speeds = {  # what the chapters' projections are computed from (tests recompute them)
        "recipe": RUN_RECIPE, "epochs": colab.epochs, "train_images": estimate.recipe_time(colab, "T4")["train_images"],
        "test_images": estimate.recipe_time(colab, "T4")["test_images"], "student": colab.student,
        "teacher": colab.teacher, "teacher_train_images_per_s": timed["teacher_row"]["train_images_per_s"],
        "train_images_per_s": {m: row["train_images_per_s"] for m, row in timed["methods"].items()},
        "test_images_per_s": timed["test_images_per_s"], "batch_size": colab.batch_size,
    }
    return {"paper_recipe": paper_out, "chapters": chapters, "chapter_speeds": speeds,
            "note": " ".join(filter(None, [
                "--quick: tiny batch and 1 timed step; not a projection to trust." if args.quick else "",
                f"--models tiny: {TINY_MODELS['teacher']} -> {TINY_MODELS['student']} instead of the recipes' "
                "models." if sizes.models else ""])) or None}


# ------------------------------------------------------------------ the check


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def check(args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    device = device_mod.pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sizes = Sizes(args, device)
    seconds = {}
    t = time.perf_counter()
    plain = run_bench(args, sizes, compile_=False)
    seconds["benchmark"] = time.perf_counter() - t
    compiled = {"skipped": "--no-compile" if args.compile is False else "--quick on a CPU: inductor compiles take "
                "minutes there; pass --compile to include it"}
    if sizes.compile:
        t = time.perf_counter()
        c = run_bench(args, sizes, compile_=True)
        compiled = {k: c[k] for k in ("ours_img_s", "reference_img_s", "ratio", "precision", "peak_memory_mib")}
        seconds["benchmark_compiled"] = time.perf_counter() - t
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cdlib-gpu-check-") as tmp:
        run = run_and_resume(args, sizes, Path(tmp))
    seconds["run_interrupt_resume"] = time.perf_counter() - t
    t = time.perf_counter()
    projected = projections(args, sizes)
    seconds["projections"] = time.perf_counter() - t
    return {
        "device": device_mod.name(device), "device_type": device.type,
        "gpu_peak_key": gpu_model_key(device_mod.name(device)) if device.type == "cuda" else None,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch_version": torch.__version__, "cuda_version": torch.version.cuda, "quick": args.quick,
        "ours_img_s": plain["ours_img_s"], "reference_img_s": plain["reference_img_s"], "ratio": plain["ratio"],
        "precision": plain["precision"], "benchmark_pair": plain["pair"],
        "benchmark_peak_memory_mib": plain["peak_memory_mib"], "compile": compiled,
        "peak_memory_mb": peak_memory_mib(device),
        "peak_memory_kind": ("torch.cuda.max_memory_allocated over the whole check, MiB" if device.type == "cuda"
                             else "max RSS of the check's process (resource.getrusage), MiB"),
        "run_top1": run["uninterrupted_final"]["top1"], "resume_identical": run["identical"], "resume": run,
        "projected": projected, "sizes": sizes.as_dict(), "models": args.models, "seconds": seconds,
        "wall_seconds": time.perf_counter() - began,
        "benchmark": plain["result"],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = check(args)
    except CDLibError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2, default=str)
    if args.no_save:
        print(text)
        return 0
    date = result["created"][:10]
    name = "cpu" if result["device_type"] == "cpu" else (result["gpu_peak_key"] or "gpu").replace(" ", "-").lower()
    path = args.output or RESULTS_DIR / f"{name}-{date}{'-quick' if args.quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    print(f"gpu_check: {result['wall_seconds']:.0f} s; ours {result['ours_img_s']:.1f} img/s, reference-style "
          f"{result['reference_img_s']:.1f} img/s ({result['ratio']:.2f}x); resume identical: "
          f"{result['resume_identical']}; written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
