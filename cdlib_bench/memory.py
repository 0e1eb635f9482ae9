"""Peak memory of one configuration on a CPU, measured alone in a fresh process."""

from __future__ import annotations

import dataclasses
import json
import platform

import torch

from .config import BenchConfig
from .pipelines import build_models, build_pipeline, make_train_set

__all__ = ["measure_cpu_memory", "cpu_memory_probe"]


def _rss_units() -> int:
    """Bytes per ru_maxrss unit: kilobytes on Linux, bytes on macOS."""
    return 1 if platform.system() == "Darwin" else 1024


def cpu_memory_probe(cfg_dict: dict, name: str, steps: int) -> int:
    """Peak RSS growth (bytes) of building and running one configuration; meant
    to run in a fresh process (see measure_cpu_memory)."""
    import resource

    cfg = BenchConfig(**cfg_dict)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cpu")
    train_set = make_train_set(cfg)
    student, teacher = build_models(cfg, device)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pipeline = build_pipeline(name, cfg, train_set, student, teacher, device)
    del student, teacher  # the pipeline holds its own copies
    for _ in range(steps):
        pipeline.run_step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pipeline.close()
    return (after - before) * _rss_units()


_PROBE_SCRIPT = (
    "import json, sys; from cdlib_bench.memory import cpu_memory_probe; "
    "job = json.load(sys.stdin); print(cpu_memory_probe(job['config'], job['name'], job['steps']))"
)


def measure_cpu_memory(cfg: BenchConfig, name: str, steps: int) -> int:
    """Max-RSS growth (bytes) of one configuration, measured alone in a fresh
    Python process: ru_maxrss is a high-water mark for the whole process, so two
    configurations in one process cannot be told apart. A plain subprocess (not
    multiprocessing) works from scripts, notebooks and stdin alike. The
    reference's DataLoader workers are separate processes and are not included."""
    import subprocess
    import sys

    job = json.dumps({"config": dataclasses.asdict(cfg), "name": name, "steps": steps})
    done = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT], input=job, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe of {name} failed:\n{done.stderr[-2000:]}")
    return int(done.stdout.strip().splitlines()[-1])
