"""Resuming a run exactly: which settings must match, the checkpoint to resume from, RNG state.

A training checkpoint holds everything a run needs to continue as if it had never stopped: trainable weights,
optimizer, LR scheduler, grad scaler, the position (epoch, step) and the epoch's running sums, the RNG state and
the metrics so far. Settings that shape the result must match the checkpoint's; machinery may change.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from . import checkpoint as ckpt
from . import data as data_mod
from . import terms as term_table
from .distributed import is_main_process
from .errors import CheckpointError, ConfigError, is_whole
from .recipes import RunConfig, parse_method
from .runfolder import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, MODEL_FILE, TEACHER_RECORD_FILE, config_dict, file_sha256

__all__ = ["seed_everything", "rng_state", "set_rng_state", "result_settings", "checkpoint_to_resume", "position",
           "training_state", "restore", "run_facts", "check_facts", "check_seed"]


_SEED_LIMIT = 2**32  # the loaders derive per-epoch and per-process seeds from it, which must stay 64-bit


def check_seed(seed: object) -> None:
    if not is_whole(seed) or not 0 <= seed < _SEED_LIMIT:
        raise ConfigError(f"seed {seed!r} is not a whole number from 0 to {_SEED_LIMIT - 1}; pick one in that range.")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Settings that shape a run's result: a resumed run must share them with the checkpoint. Machinery (device,
# amp, workers, progress, folders) may change.
_RESULT_SETTINGS = (
    "data", "data_options", "image_size", "student", "method", "epochs", "batch_size", "lr", "momentum",
    "weight_decay", "lr_milestones", "lr_gamma", "seed", "max_steps_per_epoch",
)  # fmt: skip
# Reference-code behaviours that change what a run computes or reports (cdlib.recipes.REFERENCE_SWITCHES).
_REFERENCE_SWITCHES = ("keep_zero_weight_terms", "gkd_nan_on_all_wrong", "report_best_epoch")


def result_settings(config: dict, terms: Tuple[str, ...]) -> dict:
    """The settings of ``config`` (a saved or current config dict) that matter for a method of ``terms``."""
    keys = list(_RESULT_SETTINGS)
    if term_table.needs_teacher(terms):
        keys += ["teacher", "teacher_bn_train"]
    if term_table.EDT in terms:
        keys.append("schedule")
    keys += [f"{t}_temperature" for t in ("kd", "gkd") if t in terms]
    settings = {k: config.get(k) for k in keys}
    for switch in _REFERENCE_SWITCHES:  # older configs lack them: off
        settings[switch] = bool(config.get(switch, False))
    scheduled = term_table.SCHEDULED if term_table.EDT in terms else ()  # weights the EDT schedule sets, whatever cfg says
    saved_weights = config.get("weights") or {}
    known = term_table.loss_terms()
    settings["weights"] = {t: float(saved_weights.get(t, 0.0)) for t in terms if t in known and t not in scheduled}
    # Milestones at or after the last epoch never change the LR (and older versions kept a
    # recipe's 60/120/160 in shortened runs), so only those that take effect must agree.
    settings["lr_milestones"] = sorted(int(m) for m in settings["lr_milestones"] or () if int(m) < int(config["epochs"]))
    return settings


_STATEFUL_PARTS = ("optimizer", "lr_scheduler", "scaler")  # the parts besides the weights whose state a checkpoint holds
_CHECKPOINT_KEYS = ("config", "epoch", "step", "trainable", *_STATEFUL_PARTS, "rng", "metrics")


def _not_ours_to_replace(folder: Path) -> Optional[Path]:
    """The first file of ``folder`` that a fresh run would replace and that holds something: a model, epochs of
    metrics, or a config.json that is not a cdlib run's (one that is, beside no metrics, is a run that trained
    nothing before it was stopped, and starting again loses nothing)."""
    model, metrics, config = folder / MODEL_FILE, folder / METRICS_FILE, folder / CONFIG_FILE
    if model.exists():
        return model
    try:
        if metrics.exists() and metrics.read_text().strip():
            return metrics
    except (OSError, UnicodeDecodeError):
        return metrics
    if config.exists():
        try:
            saved = json.loads(config.read_text())
        except (OSError, ValueError):
            return config
        if not (isinstance(saved, dict) and {"student", "method", "epochs", "run_dir"} <= set(saved)):
            return config
    return None


def checkpoint_to_resume(cfg: RunConfig, checkpoint_path: Path, world_size: int) -> Optional[dict]:
    """The run folder's training checkpoint, checked against ``cfg``; None for a fresh start, which never replaces
    a finished model, recorded epochs or a file cdlib did not write unless ``cfg.overwrite`` says so."""
    folder = checkpoint_path.parent
    if cfg.overwrite and not (cfg.resume and checkpoint_path.exists()):
        # The earlier run's checkpoint and model go now, so that no later step (a --resume, a reused teacher) can
        # mistake them for this run's before it has written its own; a teacher's record would misdescribe the new one.
        if is_main_process():  # under torchrun rank 0 alone writes, and removes
            for name in (CHECKPOINT_FILE, MODEL_FILE, TEACHER_RECORD_FILE):
                (folder / name).unlink(missing_ok=True)
        return None
    if not checkpoint_path.exists():
        found = _not_ours_to_replace(folder)
        if found is not None:
            what = "a finished model" if found.name == MODEL_FILE else "a file this run would replace"
            raise ConfigError(f"{folder} holds {what}, {found}, and no checkpoint to resume from; choose another run "
                              "folder, or pass overwrite=True (CLI: --overwrite) to train afresh and replace it.")
        return None
    if not cfg.resume:
        raise ConfigError(f"{folder} already holds a checkpoint from an earlier run; pass resume=True (CLI: --resume) "
                          "to continue it, overwrite=True (CLI: --overwrite) to start afresh, or choose another run folder.")
    saved = ckpt.safe_load(checkpoint_path, "training checkpoint")
    if (saved.get("format") != ckpt.TRAINING_FORMAT or any(k not in saved for k in _CHECKPOINT_KEYS)
            or not isinstance(saved["config"], dict)):
        raise CheckpointError(f"{checkpoint_path} is not a complete cdlib training checkpoint; move it away or pick "
                              "another run folder.")
    terms = parse_method(cfg.method)
    before, now = result_settings(saved["config"], terms), result_settings(config_dict(cfg), terms)
    diffs = [f"{k}: {before[k]!r} -> {now[k]!r}" for k in now if before[k] != now[k]]
    if diffs:
        raise ConfigError(f"cannot resume {checkpoint_path}: it was started with different settings ({'; '.join(diffs)}); "
                          "use the original settings or another --run-dir.")
    saved_world_size = saved.get("world_size", 1)
    if saved["step"] and saved_world_size != world_size:
        # Mid-epoch, the position counts steps of one process's shard, which depends on the process count.
        raise ConfigError(f"{checkpoint_path} was saved mid-epoch by {saved_world_size} process(es); resume it with "
                          f"{saved_world_size} (this run has {world_size}).")
    return saved


def run_facts(cfg: RunConfig, parts) -> dict:
    """What a run's result depends on beyond its settings: the data's content and the teacher's weights (a data
    folder or a teacher file may move, but a resumed run must see the same images and the same teacher)."""
    facts = {"data_fingerprint": data_mod.fingerprint(parts.bundle), "data_root": cfg.data_root}
    if parts.teacher is not None:
        facts["teacher_sha256"] = (file_sha256(cfg.teacher_checkpoint) if cfg.teacher_checkpoint
                                   else f"pretrained {cfg.teacher} (torchvision)")
        facts["teacher_file"] = cfg.teacher_checkpoint
    return facts


def check_facts(saved: dict, facts: dict, path: Path) -> None:
    """Refuse to resume when the data or the teacher differ from those the checkpoint was trained with."""
    before = saved.get("facts")
    if not isinstance(before, dict):
        return  # written before checkpoints recorded them: the settings were checked
    diffs, what = [], []
    if before.get("data_fingerprint") != facts["data_fingerprint"]:
        what.append("other data")
        diffs.append(f"data: data_root {before.get('data_root')!r} -> {facts['data_root']!r}, content fingerprint "
                     f"{str(before.get('data_fingerprint'))[:12]} -> {facts['data_fingerprint'][:12]}")
    if "teacher_sha256" in facts and before.get("teacher_sha256") != facts["teacher_sha256"]:
        what.append("another teacher")
        diffs.append(f"teacher: {before.get('teacher_file')!r} (SHA-256 {str(before.get('teacher_sha256'))[:12]}) -> "
                     f"{facts['teacher_file']!r} (SHA-256 {facts['teacher_sha256'][:12]})")
    if diffs:
        raise ConfigError(f"cannot resume {path}: it was trained with {' and '.join(what)} ({'; '.join(diffs)}); "
                          "resume with the original ones, or start again in another --run-dir.")


def position(epoch: int, step: int) -> str:
    """The place a checkpoint resumes from, in words."""
    return f"end of epoch {epoch - 1}" if step == 0 else f"epoch {epoch}, step {step}"


def training_state(parts, cfg: RunConfig, world_size: int, epoch: int, step: int, partial_sums: Optional[dict],
                   metrics: list, teacher_metrics: Optional[Dict[str, float]], facts: Optional[dict] = None) -> dict:
    """What a training checkpoint holds, to resume at (epoch, step); ``parts`` is a :class:`cdlib.parts.Parts`."""
    return {
        "format": ckpt.TRAINING_FORMAT,
        "config": config_dict(cfg),
        "num_classes": parts.bundle.num_classes,
        "world_size": world_size,
        "epoch": epoch,
        "step": step,
        "partial": partial_sums,
        "trainable": parts.distiller.trainable_state_dict(),
        **{name: getattr(parts, name).state_dict() for name in _STATEFUL_PARTS},
        "rng": rng_state(),
        "metrics": metrics,
        "teacher_metrics": teacher_metrics,
        "facts": facts,
    }


def restore(parts, saved: dict, path: Path) -> None:
    """Load a checkpoint's weights, optimizer, schedulers and RNG state into ``parts``."""
    try:
        parts.distiller.load_trainable_state_dict(saved["trainable"])
        for name in _STATEFUL_PARTS:
            getattr(parts, name).load_state_dict(saved[name])
        set_rng_state(saved["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} does not fit this run ({reason}); move it away or pick another run folder.") from None
