"""``run_benchmark``: warm up, time the configurations in alternating windows, and describe the result."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch

from cdlib import device as device_mod
from cdlib import terms
from cdlib.device import pick_device

from .config import (
    ABLATIONS,
    CIFAR_TRAIN_IMAGES,
    CONFIGURATIONS,
    PAPER_BATCH,
    PAPER_EPOCHS,
    PAPER_STUDENT,
    PAPER_TEACHER,
    BenchConfig,
)
from .flops import gpu_model_key, peak_tflops
from .memory import measure_cpu_memory
from .pipelines import Pipeline, build_models, build_pipeline, make_train_set, synchronize
from .projection import count_step_flops, project_recipe
from .results import RESULT_SCHEMA_VERSION, format_summary
from .steps import cudnn_tf32

__all__ = ["run_benchmark"]


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
    say(f"{cfg.teacher} -> {cfg.student}, batch {cfg.batch_size}, on {device_mod.name(device)}; "
        f"{flops['per_step']['total'] / 1e9:.1f} GFLOP per step; weights {cfg.loss_weights()}")
    memory = _cpu_memory(cfg, device, names, say)
    pipelines: Dict[str, Pipeline] = {}
    try:
        memory.update(_warm_up(cfg, device, names, pipelines))
        seconds = _time_rounds(cfg, names, pipelines, say)
        finite = {name: pipelines[name].losses_finite() for name in names}
        descriptions = {name: pipelines[name].description for name in names}
    finally:
        for pipeline in pipelines.values():
            pipeline.close()
    gpu_key = gpu_model_key(device_mod.name(device)) if device.type == "cuda" else None
    configurations = {name: _summarise_configuration(descriptions[name], seconds[name], cfg, flops, memory.get(name),
                                                     device, gpu_key, finite[name]) for name in names}
    result = _result(cfg, device, flops, configurations, seconds)
    say(format_summary(result))
    return result


def _cpu_memory(cfg: BenchConfig, device: torch.device, names: List[str], say) -> Dict[str, Optional[int]]:
    memory: Dict[str, Optional[int]] = {}
    steps = max(cfg.warmup_steps, 2)
    if cfg.measure_memory and device.type == "cpu":
        for name in names:
            memory[name] = measure_cpu_memory(cfg, name, steps)
            say(f"  {name}: max RSS grew {memory[name] / 2**20:.0f} MiB (fresh process, {steps} steps)")
    return memory


def _warm_up(cfg: BenchConfig, device: torch.device, names: List[str], pipelines: Dict[str, Pipeline]) -> Dict[str, int]:
    """Build and warm up one configuration at a time into ``pipelines``; on a GPU, the peak
    memory of the warm-up is that configuration's own (the others' transients are freed)."""
    train_set = make_train_set(cfg)
    student, teacher = build_models(cfg, device)
    memory: Dict[str, int] = {}
    for name in names:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            baseline = torch.cuda.memory_allocated(device)
        pipelines[name] = build_pipeline(name, cfg, train_set, student, teacher, device)
        for index in range(cfg.warmup_steps):
            pipelines[name].run_step()
            if index == 0 and cfg.warmup_steps >= 2 and device.type == "cuda":
                # The first step's peak holds cuDNN's autotuning workspaces, which
                # training does not keep paying for: measure from the second step.
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        if device.type == "cuda" and cfg.measure_memory:
            memory[name] = torch.cuda.max_memory_allocated(device) - baseline
    return memory


def _timed_window(pipeline: Pipeline, steps: int, settle_steps: int) -> float:
    pipeline.start_window()
    for _ in range(settle_steps):
        pipeline.run_step()
    synchronize(pipeline.device)
    start = time.perf_counter()
    for _ in range(steps):
        pipeline.run_step()
    synchronize(pipeline.device)
    return time.perf_counter() - start


def _time_rounds(cfg: BenchConfig, names: List[str], pipelines: Dict[str, Pipeline], say) -> Dict[str, List[float]]:
    seconds: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(cfg.rounds):
        # Alternate the order so neither configuration always runs first (drift, caches).
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            seconds[name].append(_timed_window(pipelines[name], cfg.steps_per_round, cfg.settle_steps))
        say(f"  round {round_index + 1}/{cfg.rounds}: " + ", ".join(
            f"{n} {cfg.steps_per_round * cfg.batch_size / seconds[n][-1]:.1f} img/s" for n in names))
    return seconds


def _result(cfg: BenchConfig, device: torch.device, flops, configurations, seconds) -> Dict[str, object]:
    ours, ref = configurations["ours"], configurations["reference_style"]
    paired = [r / o for o, r in zip(seconds["ours"], seconds["reference_style"])]
    return {
        "schema_version": RESULT_SCHEMA_VERSION,
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": _machine(device),
        "config": {**dataclasses.asdict(cfg), "reference_workers": cfg.workers(), "loss_weights": cfg.loss_weights(),
                   "terms": list(terms.SCHEDULED)},
        "flops": flops,
        "configurations": configurations,
        "ratio_ours_over_reference": ours["images_per_s"] / ref["images_per_s"],
        "paired_round_ratios": paired,
        "projection": _projection(cfg, device, configurations),
        "notes": _notes(cfg, device),
    }


def _summarise_configuration(description, seconds: List[float], cfg: BenchConfig, flops, memory_bytes,
                             device: torch.device, gpu_key: Optional[str], losses_finite: bool) -> Dict[str, object]:
    images = cfg.steps_per_round * cfg.batch_size
    rates = [images / s for s in seconds]
    step_ms = [1000 * s / cfg.steps_per_round for s in seconds]
    median_step_s = statistics.median(step_ms) / 1000
    achieved = flops["per_step"]["total"] / median_step_s / 1e12
    precision = description["precision"].split(" ")[0]
    if precision == "fp32" and cudnn_tf32(device):
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


def _machine(device: torch.device) -> Dict[str, object]:
    info = {
        "device_type": device.type,
        "device_name": device_mod.name(device),
        "cpu_count": os.cpu_count(),
        "cpu_model": device_mod.cpu_model(),
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
