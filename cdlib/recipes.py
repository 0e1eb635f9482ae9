"""Named training recipes: plain dataclasses a student can read and override.

``get("cifar100")`` carries the paper's CIFAR-100 hyper-parameters (ResNet152
teacher, ResNet50 student, 200 epochs); ``get("imagenet")`` the ImageNet ones
(torchvision's pretrained ResNet34 teacher, ResNet18 student, 100 epochs);
``get("demo")`` small models on the bundled digits set that train on a CPU in
about a minute. Every field can be overridden: ``get("demo", epochs=5)``.
Changing ``epochs`` moves the learning-rate milestones with it (unless
``lr_milestones`` is given too), so a shortened recipe still decays its LR.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from .errors import ConfigError

__all__ = ["RunConfig", "get", "names", "METHODS", "parse_method", "scale_milestones"]

# The loss terms a method string can name, plus "edt" (weights from a schedule).
LOSS_TERMS = ("ce", "kd", "gkd", "cd", "at", "fitnets")
METHODS = LOSS_TERMS + ("edt",)


@dataclass
class RunConfig:
    """Everything one training run needs. ``method`` is a '+'-joined subset of
    ``ce, kd, gkd, cd, at, fitnets, edt`` (cross-entropy is always included);
    a ','-separated list of methods trains each and prints a comparison."""

    # what to train
    data: str = "cifar100"
    data_root: Optional[str] = "data"
    download: bool = False
    image_size: Optional[int] = None
    # extra keyword arguments for cdlib.data.load, e.g. {"train_per_class": 40} for digits
    data_options: Dict[str, Any] = field(default_factory=dict)
    student: str = "cifar_resnet50"
    teacher: str = "cifar_resnet152"
    teacher_checkpoint: Optional[str] = None
    teacher_pretrained: bool = False
    method: str = "cd+gkd+edt"
    # loss weights when no schedule applies (and for kd / at / fitnets always)
    weights: Dict[str, float] = field(default_factory=lambda: {"ce": 1.0, "kd": 1.0, "gkd": 0.1, "cd": 6.0, "at": 1000.0, "fitnets": 100.0})
    schedule: str = "paper-cifar100"
    kd_temperature: float = 4.0
    gkd_temperature: float = 1.0
    # the reference code leaves the frozen teacher's BatchNorm in train mode; True reproduces that
    teacher_bn_train: bool = False
    # optimisation
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_milestones: Tuple[int, ...] = (60, 120, 160)
    lr_gamma: float = 0.2
    # machinery
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto | bf16 | fp16 | off
    channels_last: bool = True
    compile: bool = False
    num_workers: int = 4
    data_on_device: bool = True
    run_dir: str = "runs/cifar100"
    resume: bool = False
    progress: bool = True
    max_steps_per_epoch: Optional[int] = None  # cap for smoke tests and CI

    def replace(self, **changes) -> "RunConfig":
        return override(self, **changes)


def parse_method(method: str) -> Tuple[str, ...]:
    """'cd+gkd+edt' -> ('ce', 'cd', 'gkd', 'edt'); unknown terms raise ConfigError."""
    terms = [t.strip().lower() for t in method.split("+") if t.strip()]
    if terms in (["student"], ["baseline"]):
        terms = ["ce"]
    unknown = [t for t in terms if t not in METHODS]
    if unknown or not terms:
        raise ConfigError(
            f"unknown method term(s) {unknown or [method]!r} in {method!r}; combine {', '.join(METHODS)} with '+', "
            "e.g. 'kd' or 'cd+gkd+edt' ('student' trains with cross-entropy only)."
        )
    if "ce" not in terms:
        terms.insert(0, "ce")
    return tuple(dict.fromkeys(terms))


_RECIPES: Dict[str, RunConfig] = {
    "cifar100": RunConfig(),
    "imagenet": RunConfig(
        data="imagenet",
        data_root="data/imagenet",
        student="resnet18",
        teacher="resnet34",
        teacher_pretrained=True,
        weights={"ce": 1.0, "kd": 1.0, "gkd": 1.0, "cd": 6.0, "at": 1000.0, "fitnets": 100.0},
        schedule="paper-imagenet",
        epochs=100,
        batch_size=256,
        weight_decay=1e-4,
        lr_milestones=(30, 60, 90),
        lr_gamma=0.1,
        num_workers=8,
        run_dir="runs/imagenet",
    ),
    "demo": RunConfig(
        data="digits",
        data_root=None,
        # Half the digits for testing (~900 images) so a 1-point gap is ~9 images,
        # and a student narrow enough (4..32 channels) that the teacher has something to teach.
        data_options={"test_fraction": 0.5},
        student="cifar_resnet10_w4",
        teacher="cifar_resnet18_w16",
        method="student,kd,cd+gkd+edt",
        schedule="paper-cifar100",
        epochs=30,
        batch_size=64,
        lr=0.05,
        lr_milestones=(20, 26),
        lr_gamma=0.2,
        num_workers=0,
        run_dir="runs/demo",
    ),
}


def names() -> list:
    return sorted(_RECIPES)


def override(cfg: RunConfig, **changes) -> RunConfig:
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; valid settings are {', '.join(sorted(known))}.")
    if "lr_milestones" in changes and changes["lr_milestones"] is not None:
        try:
            changes["lr_milestones"] = tuple(int(m) for m in changes["lr_milestones"])
        except (TypeError, ValueError):
            raise ConfigError(f"lr_milestones must be a list of epoch numbers, got {changes['lr_milestones']!r}.") from None
    if "weights" in changes and changes["weights"] is not None:
        if not isinstance(changes["weights"], dict):
            raise ConfigError(f"weights must be a dict of loss term -> weight, got {changes['weights']!r}.")
        # Only the named terms change; the recipe's other weights stay.
        changes["weights"] = {**cfg.weights, **changes["weights"]}
    new = dataclasses.replace(cfg, **changes)
    validate(new)
    return new


def validate(cfg: RunConfig) -> None:
    """Check every setting that can be checked without data or a GPU, so a typo
    fails in a second instead of after the teacher has trained for an hour."""
    methods = [m for m in cfg.method.split(",") if m.strip()]
    if not methods:
        raise ConfigError(f"method {cfg.method!r} names no method; e.g. 'kd' or 'student,kd,cd+gkd+edt'.")
    for method in methods:
        parse_method(method)
    if cfg.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {cfg.epochs}.")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {cfg.batch_size}.")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ConfigError(f"learning rate must be a positive number, got {cfg.lr}.")
    for name in ("momentum", "weight_decay"):
        if not (getattr(cfg, name) >= 0 and math.isfinite(getattr(cfg, name))):
            raise ConfigError(f"{name} must be a non-negative number, got {getattr(cfg, name)}.")
    early = [m for m in cfg.lr_milestones if m < 1]
    if early:
        raise ConfigError(f"lr_milestones are epoch numbers from 1 on (the LR decays after that epoch), got {early}.")
    late = [m for m in cfg.lr_milestones if m > cfg.epochs]
    if late:
        raise ConfigError(
            f"lr_milestones {late} lie after the last of {cfg.epochs} epochs, so the learning rate would never decay "
            f"there; pass milestones up to {cfg.epochs}, or change epochs through recipes.get(name, epochs=...) "
            f"(CLI: --epochs alone), which moves the recipe's milestones with it."
        )
    if not cfg.lr_gamma > 0:
        raise ConfigError(f"lr_gamma must be positive, got {cfg.lr_gamma}.")
    for name in ("kd_temperature", "gkd_temperature"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)}.")
    if cfg.max_steps_per_epoch is not None and cfg.max_steps_per_epoch < 1:
        raise ConfigError(f"max_steps_per_epoch must be at least 1 (or None for whole epochs), got {cfg.max_steps_per_epoch}.")
    if cfg.num_workers < 0:
        raise ConfigError(f"num_workers must be 0 or more, got {cfg.num_workers}.")
    if cfg.image_size is not None and cfg.image_size < 1:
        raise ConfigError(f"image_size must be a positive number of pixels, got {cfg.image_size}.")
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"amp must be one of auto, bf16, fp16, off; got {cfg.amp!r}.")
    if not isinstance(cfg.data_options, dict):
        raise ConfigError(f"data_options must be a dict of keyword arguments for cdlib.data.load, got {cfg.data_options!r}.")
    from . import data, models, schedules

    for role in ("student", "teacher"):
        if getattr(cfg, role) not in models.names():
            raise ConfigError(f"unknown {role} model {getattr(cfg, role)!r}; choose one of {', '.join(models.names())}.")
    if cfg.data not in data.names():
        raise ConfigError(f"unknown data set {cfg.data!r}; choose one of {', '.join(data.names())}.")
    if cfg.schedule not in schedules.names():
        raise ConfigError(f"unknown EDT schedule {cfg.schedule!r}; choose one of {', '.join(schedules.names())}.")
    unknown_weights = sorted(set(cfg.weights) - set(LOSS_TERMS))
    if unknown_weights:
        raise ConfigError(f"unknown loss weight(s) {unknown_weights}; weights exist for {', '.join(LOSS_TERMS)}.")
    bad_weights = {t: w for t, w in cfg.weights.items() if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0)}
    if bad_weights:
        raise ConfigError(f"loss weights must be finite numbers >= 0, got {bad_weights}.")


def scale_milestones(milestones: Tuple[int, ...], from_epochs: int, to_epochs: int) -> Tuple[int, ...]:
    """LR milestones at the same fractions of a run of ``to_epochs`` as of ``from_epochs``:
    (60, 120, 160) of 200 epochs -> (15, 30, 40) of 50. Never earlier than epoch 1."""
    return tuple(max(1, round(m * to_epochs / from_epochs)) for m in milestones)


def get(name: str, **overrides) -> RunConfig:
    """A recipe by name, with any field overridden.

    ``epochs`` without ``lr_milestones`` scales the recipe's milestones:
    ``get("cifar100", epochs=50)`` decays the LR at epochs 15, 30 and 40, where
    the paper's 60, 120 and 160 would never be reached.
    """
    if name not in _RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(names())}.")
    base = _RECIPES[name]
    epochs = overrides.get("epochs")
    if isinstance(epochs, int) and epochs >= 1 and overrides.get("lr_milestones") is None:
        overrides["lr_milestones"] = scale_milestones(base.lr_milestones, base.epochs, epochs)
    return override(dataclasses.replace(base), **overrides)
