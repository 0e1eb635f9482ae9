"""Teachers that check themselves.

When a teacher has been trained, :func:`record` writes ``teacher.json`` beside its ``model.pt``: the test accuracy
it reached, a fingerprint of the data (:func:`cdlib.data.fingerprint`) and the SHA-256 of the model file. Whoever
reuses the teacher later (:func:`cdlib.train.ensure_teacher`, :func:`cdlib.seeds.run`) calls :func:`verify`, which
measures all three again and prints a warning for each that no longer matches: a model file replaced or damaged,
data that changed under it (another split, a changed loader), or an accuracy that moved (a changed model definition
or evaluation).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List

from .checkpoint import atomic_write
from .recipes import RunConfig
from .runfolder import MODEL_FILE

__all__ = ["RECORD_FILE", "TOP1_TOLERANCE", "file_sha256", "measure", "record", "verify"]

RECORD_FILE = "teacher.json"
# Evaluated on another device or in another precision, a few borderline predictions may flip;
# half a point is far more than that and far less than a wrong teacher.
TOP1_TOLERANCE = 0.5


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def measure(folder: str | os.PathLike, cfg: RunConfig) -> Dict[str, object]:
    """The teacher in ``folder`` now: its test accuracy on ``cfg``'s data, the data's fingerprint, its file hash."""
    from . import data
    from .parts import evaluate_model_file

    path = Path(folder) / MODEL_FILE
    metrics, bundle = evaluate_model_file(path, cfg, cfg.student)
    return {"test_top1": metrics["top1"], "test_loss": metrics["loss"], "data_fingerprint": data.fingerprint(bundle),
            "sha256": file_sha256(path)}


def record(folder: str | os.PathLike, cfg: RunConfig) -> None:
    """Measure the teacher just trained in ``folder`` (``cfg``: its own training config) and write teacher.json."""
    record = json.dumps(measure(folder, cfg), indent=2) + "\n"
    atomic_write(Path(folder) / RECORD_FILE, lambda f: f.write(record.encode()))


def verify(folder: str | os.PathLike, cfg: RunConfig) -> List[str]:
    """Measure a reused teacher again and print a warning for each fact that changed; returns the warnings. A
    teacher without a record (trained before records existed) gets one now, so later reuses are checked."""
    try:
        saved = json.loads((Path(folder) / RECORD_FILE).read_text())
    except (OSError, ValueError):
        record(folder, cfg)
        return []
    now = measure(folder, cfg)
    problems = []
    if saved.get("sha256") != now["sha256"]:
        problems.append(f"{Path(folder) / MODEL_FILE} is not the file that was trained (its SHA-256 changed): it was "
                        "replaced or damaged since")
    if saved.get("data_fingerprint") != now["data_fingerprint"]:
        problems.append(f"the data differ from those the teacher was trained and tested on (data fingerprint changed; "
                        f"data {cfg.data!r}, options {cfg.data_options}): another split, size or loader version")
    top1 = saved.get("test_top1")
    if not isinstance(top1, (int, float)) or abs(now["test_top1"] - top1) > TOP1_TOLERANCE:
        problems.append(f"its test top-1 is {now['test_top1']:.2f}% now but was {top1 if top1 is None else f'{top1:.2f}'}% "
                        "when it was trained")
    for problem in problems:
        print(f"warning: reusing the teacher in {folder}: {problem}; delete {folder} to train it again, or keep it "
              "knowingly.", flush=True)
    return problems
