"""A run folder and what it holds: file names, ``config.json``, ``metrics.jsonl``, the result of a run.

A run folder holds ``config.json`` (the settings), ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt`` (the
state to resume from) and, when finished, ``model.pt`` (the trained student, reusable as a teacher; a teacher's
folder also ``teacher.json``, what a reuse checks it against). A fresh run
never replaces a finished model or another run's files unless asked (``overwrite``,
:func:`cdlib.resume.checkpoint_to_resume`). An experiment folder holds one run folder per method (``cd+gkd+edt`` ->
``cd_gkd_edt``) and the teacher's in ``teacher/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from torch import nn

from .checkpoint import atomic_write
from .errors import CheckpointError, ConfigError
from .recipes import RunConfig, parse_method

__all__ = ["CONFIG_FILE", "METRICS_FILE", "CHECKPOINT_FILE", "MODEL_FILE", "RunResult", "config_dict", "read_metrics",
           "write_metrics", "write_run_files", "slug", "teacher_dir", "check_reusable_teacher", "summary_line",
           "comparison_table", "TEACHER_RECORD_FILE", "file_sha256", "measure_teacher", "record_teacher", "verify_teacher"]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"


@dataclass
class RunResult:
    run_dir: Path
    method: str
    metrics: List[dict]
    final: Dict[str, float]
    model: nn.Module = field(repr=False)
    teacher_metrics: Optional[Dict[str, float]] = None

    @property
    def model_path(self) -> Path:
        return self.run_dir / MODEL_FILE


def config_dict(cfg: RunConfig) -> dict:
    """``cfg`` as the JSON-ready dict that config.json and checkpoints store."""
    d = dataclasses.asdict(cfg)
    d["lr_milestones"] = list(cfg.lr_milestones)
    return d


def read_metrics(run_dir: str | os.PathLike) -> List[dict]:
    """The per-epoch metrics a run wrote (one dict per epoch)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            # The run's checkpoint.pt holds the same rows: a --resume rewrites this file from it.
            raise CheckpointError(f"{path} line {number} is not a metrics row ({line[:40]!r}); rerun the run with "
                                  "--resume (resume=True) to rewrite the file from its checkpoint.pt.")
        rows.append(row)
    return rows


def write_metrics(run_dir: Path, rows: List[dict]) -> None:
    """All rows at once (:func:`cdlib.checkpoint.atomic_write`)."""
    atomic_write(run_dir / METRICS_FILE, lambda f: f.write("".join(json.dumps(r) + "\n" for r in rows).encode()))


def write_run_files(run_dir: Path, cfg: RunConfig, metrics: List[dict]) -> None:
    atomic_write(run_dir / CONFIG_FILE, lambda f: f.write(json.dumps(config_dict(cfg), indent=2).encode()))
    write_metrics(run_dir, metrics)


def slug(label: str) -> str:
    """The sub-folder name of a method or a study's label: 'cd+gkd+edt' -> 'cd_gkd_edt', 'student' -> 'student',
    'cd+gkd+edt (cosine)' -> 'cd_gkd_edt_cosine'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label.strip().replace("+", "_")).strip("_")


def teacher_dir(run_dir: str | os.PathLike) -> Path:
    """Where :func:`cdlib.train.ensure_teacher` (and `cdlib train`) keep the teacher of an experiment folder."""
    return Path(run_dir) / "teacher"


# What a reused teacher must share with the run that reuses it.
_TEACHER_SETTINGS = ("student", "data", "data_options", "image_size")


def check_reusable_teacher(folder: Path, teacher_cfg: RunConfig) -> None:
    """Refuse a teacher folder trained on other data or as another model than ``teacher_cfg`` asks for."""
    try:
        trained = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return  # no record of how it was trained: the model file's own name and class count are still checked
    wanted = config_dict(teacher_cfg)
    diffs = [f"{k}: {trained.get(k)!r} (wanted {wanted[k]!r})" for k in _TEACHER_SETTINGS if trained.get(k) != wanted[k]]
    if diffs:
        raise ConfigError(f"the teacher in {folder} was trained with other settings ({'; '.join(diffs)}); use another "
                          f"--run-dir, or pass --teacher-checkpoint {folder / MODEL_FILE} to use it anyway.")


def summary_line(row: dict, epochs: int, method: str) -> str:
    """The line printed after each epoch."""
    terms = " ".join(f"{k[5:]}={v:.3f}" for k, v in row.items() if k.startswith("loss_"))
    return (f"[{method}] epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.3f} ({terms})  "
            f"train {row['train_top1']:.1f}%  test top-1 {row['test_top1']:.2f}% top-5 {row['test_top5']:.2f}%  "
            f"{row['images_per_s']:.0f} img/s  {row['epoch_seconds']:.1f}s")


def comparison_table(results: Dict[str, RunResult], cfg: RunConfig) -> str:
    """A plain-text table of the final test accuracy of each run (and of ``cfg.teacher``)."""
    rows = []
    teacher = next((r.teacher_metrics for r in results.values() if r.teacher_metrics), None)
    if teacher:
        rows.append((f"teacher {cfg.teacher}", teacher["top1"], teacher["top5"], float("nan")))
    for method, r in results.items():
        label = "student alone" if parse_method(method) == ("ce",) else method
        seconds = sum(m["epoch_seconds"] for m in r.metrics)
        rows.append((label, r.final.get("top1", float("nan")), r.final.get("top5", float("nan")), seconds))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'method':<{width}}{'top-1 %':>9}{'top-5 %':>9}{'train s':>9}", "-" * (width + 27)]
    for label, top1, top5, seconds in rows:
        secs = "" if math.isnan(seconds) else f"{seconds:.1f}"
        lines.append(f"{label:<{width}}{top1:>9.2f}{top5:>9.2f}{secs:>9}")
    return "\n".join(lines)


# ------------------------------------------------------------------ teachers that check themselves
# When a teacher has been trained, record_teacher writes teacher.json beside its model.pt: the test accuracy it
# reached, a fingerprint of the data (cdlib.data.fingerprint) and the SHA-256 of the model file. Whoever reuses the
# teacher later (cdlib.train.ensure_teacher, cdlib.seeds.run) calls verify_teacher, which measures all three again
# and warns of each that no longer matches: a model file replaced or damaged, data that changed under it (another
# split, a changed loader), or an accuracy that moved (a changed model definition or evaluation).

TEACHER_RECORD_FILE = "teacher.json"
# Evaluated on another device or in another precision, a few borderline predictions may flip;
# half a point is far more than that and far less than a wrong teacher.
TEACHER_TOP1_TOLERANCE = 0.5


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def measure_teacher(folder: str | os.PathLike, cfg: RunConfig) -> Dict[str, object]:
    """The teacher in ``folder`` now: its test accuracy on ``cfg``'s data, the data's fingerprint, its file hash."""
    from . import data
    from .parts import evaluate_model_file

    path = Path(folder) / MODEL_FILE
    metrics, bundle = evaluate_model_file(path, cfg, cfg.student)
    return {"test_top1": metrics["top1"], "test_loss": metrics["loss"], "data_fingerprint": data.fingerprint(bundle),
            "sha256": file_sha256(path)}


def record_teacher(folder: str | os.PathLike, cfg: RunConfig) -> None:
    """Measure the teacher just trained in ``folder`` (``cfg``: its own training config) and write teacher.json."""
    record = json.dumps(measure_teacher(folder, cfg), indent=2) + "\n"
    atomic_write(Path(folder) / TEACHER_RECORD_FILE, lambda f: f.write(record.encode()))


def verify_teacher(folder: str | os.PathLike, cfg: RunConfig) -> List[str]:
    """Measure a reused teacher again and print a warning for each fact that changed; returns the warnings. A
    teacher without a record (trained before records existed) gets one now, so later reuses are checked."""
    try:
        saved = json.loads((Path(folder) / TEACHER_RECORD_FILE).read_text())
    except (OSError, ValueError):
        record_teacher(folder, cfg)
        return []
    now = measure_teacher(folder, cfg)
    problems = []
    if saved.get("sha256") != now["sha256"]:
        problems.append(f"{Path(folder) / MODEL_FILE} is not the file that was trained (its SHA-256 changed): it was "
                        "replaced or damaged since")
    if saved.get("data_fingerprint") != now["data_fingerprint"]:
        problems.append(f"the data differ from those the teacher was trained and tested on (data fingerprint changed; "
                        f"data {cfg.data!r}, options {cfg.data_options}): another split, size or loader version")
    top1 = saved.get("test_top1")
    if not isinstance(top1, (int, float)) or abs(now["test_top1"] - top1) > TEACHER_TOP1_TOLERANCE:
        problems.append(f"its test top-1 is {now['test_top1']:.2f}% now but was {top1 if top1 is None else f'{top1:.2f}'}% "
                        "when it was trained")
    for problem in problems:
        print(f"warning: reusing the teacher in {folder}: {problem}; delete {folder} to train it again, or keep it "
              "knowingly.", flush=True)
    return problems
