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
import os
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, field
from typing import Any, Dict, Optional, Tuple

from . import terms
from .errors import MAX_EPOCHS, ConfigError, is_finite, is_number, is_whole, shown
from .registry import Registry

__all__ = ["RunConfig", "setting", "RECIPES", "get", "names", "parse_method", "scale_milestones", "REFERENCE_SWITCHES",
           "MAX_IMAGE_SIZE"]

# The RunConfig switches that reproduce a behaviour of the reference code; reference_compat=True sets them all.
REFERENCE_SWITCHES = ("teacher_bn_train", "keep_zero_weight_terms", "gkd_nan_on_all_wrong", "report_best_epoch")

# Upper bounds, checked before anything is allocated: past them a value is a typo (an extra zero), and
# failing at once beats an OverflowError in the LR arithmetic or a many-terabyte allocation later.
MAX_IMAGE_SIZE = 1024  # pixels a side (CIFAR 32, ImageNet 224); also the largest digits canvas
MAX_IN_MEMORY_BYTES = 16 * 2**30  # digits / synthetic are built in memory; a larger set is a typo
# The whole-number settings' bounds, read by one loop in validate(): (least, most or None, an example).
# A batch is per process: the largest published ImageNet batches are split over many GPUs.
_WHOLE_BOUNDS = {"epochs": (1, MAX_EPOCHS, 200), "batch_size": (1, 65_536, 128), "num_workers": (0, 256, 4),
                 "image_size": (1, MAX_IMAGE_SIZE, 32), "max_steps_per_epoch": (1, None, "None (whole epochs)")}
# Numbers that must be finite and positive; momentum and weight decay may also be 0.
_POSITIVE = ("lr", "lr_gamma", "kd_temperature", "gkd_temperature")
_NON_NEGATIVE = ("momentum", "weight_decay")


def setting(default: Any = MISSING, meaning: str = "", *, factory: Any = MISSING) -> Any:
    """A :class:`RunConfig` field and what it means, in one place: ``cdlib --help`` shows ``meaning``."""
    return field(default=default, default_factory=factory, metadata={"meaning": meaning})


@dataclass
class RunConfig:
    """Everything one training run needs. ``method`` is a '+'-joined subset of
    the loss terms of :data:`cdlib.terms.TERMS` (``ce, kd, gkd, cd, at, fitnets``)
    and ``edt`` (cross-entropy is always included); a ','-separated list of
    methods trains each and prints a comparison. Each setting says what it means."""

    # what to train
    data: str = setting("cifar100", "data set: cifar100, imagenet, digits (bundled) or synthetic")
    data_root: Optional[str] = setting("data", "data folder (CIFAR-100: the folder holding cifar-100-python/; "
                                               "ImageNet: the folder holding train/ and val/)")
    download: bool = setting(False, "download CIFAR-100 into data_root if it is missing")
    image_size: Optional[int] = setting(None, "image side in pixels (digits/synthetic: resize, default 16; "
                                              "ImageNet: crop, default 224)")
    data_options: Dict[str, Any] = setting(factory=dict, meaning="extra data-set options (cdlib.data.load) as "
                                                                  "key=value, e.g. train_per_class=40 (digits)")
    student: str = setting("cifar_resnet50", "student model name (see `cdlib list`)")
    teacher: str = setting("cifar_resnet152", "teacher model name (`cdlib train`: the model trained unless --model "
                                              "is given)")
    teacher_checkpoint: Optional[str] = setting(None, "teacher weights (a model.pt from `cdlib train`); without it, "
                                                      "distill trains the teacher first")
    teacher_pretrained: bool = setting(False, "use torchvision's pretrained ImageNet weights for the teacher")
    method: str = setting("cd+gkd+edt", f"'+'-joined loss terms of {', '.join(terms.methods())} ('student' = ce "
                                        "only); ',' separates methods to compare")
    weights: Dict[str, float] = setting(
        factory=terms.default_weights, meaning="loss weights as term=value, e.g. cd=6 gkd=0.1; EDT's schedule "
        f"overrides {', '.join(terms.SCHEDULED)} (kd, at and fitnets always take these)")
    schedule: str = setting("paper-cifar100", "EDT schedule (see `cdlib list`), e.g. paper-cifar100, cosine")
    kd_temperature: float = setting(4.0, "temperature of the KD loss")
    gkd_temperature: float = setting(1.0, "temperature of the GKD loss")
    # Behaviours of the authors' reference code, each off by default (README: "Where we differ from the reference
    # code"; results/reference-switches/ measures each).
    teacher_bn_train: bool = setting(False, "leave the frozen teacher's BatchNorm in train mode (batch "
                                            "statistics), as the reference code's net.train() did (ablation)")
    keep_zero_weight_terms: bool = setting(
        False, "compute loss terms of weight 0 and multiply by 0, as the reference code did, so their parameters "
        "get zero (not absent) gradients and weight decay and momentum still act on them (the classifier in EDT's "
        "CD-only warm-up); the teacher runs each step (ablation)")
    gkd_nan_on_all_wrong: bool = setting(False, "GKD is NaN on a batch the teacher gets all wrong, as the "
                                                "reference code's 0/0, and the run stops as diverged (demonstration)")
    report_best_epoch: bool = setting(False, "report the best epoch's test accuracy, as the reference code did, "
                                             "instead of the last's (optimistic: chosen on the test set)")
    reference_compat: bool = setting(False, "every reference-code behaviour at once: --teacher-bn-train "
                                            "--keep-zero-weight-terms --gkd-nan-on-all-wrong --report-best-epoch "
                                            "(and reflect padding; pad_mode=zeros is refused with it)")
    # optimisation
    epochs: int = setting(200, "number of epochs (the LR milestones move with it unless lr_milestones is given)")
    batch_size: int = setting(128, "batch size per process")
    lr: float = setting(0.1, "initial learning rate (SGD)")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(5e-4, "weight decay")
    lr_milestones: Tuple[int, ...] = setting((60, 120, 160), "epochs after which the learning rate is "
                                                             "multiplied by lr_gamma")
    lr_gamma: float = setting(0.2, "learning-rate decay factor at each milestone")
    # machinery
    seed: int = setting(0, "random seed (data order, augmentation, initialisation)")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps")
    amp: str = setting("auto", "mixed precision: auto (bf16/fp16 on GPU, off on CPU), bf16, fp16 or off")
    channels_last: bool = setting(True, "use the channels-last memory format on GPUs")
    compile: bool = setting(False, "compile student and teacher with torch.compile")
    num_workers: int = setting(4, "DataLoader workers (ImageNet; in-memory sets need none)")
    data_on_device: bool = setting(True, "keep in-memory data sets on the device and augment there")
    run_dir: str = setting("runs/cifar100", "experiment folder: the teacher trains in <run-dir>/teacher, each "
                                            "method in <run-dir>/<method>")
    resume: bool = setting(False, "continue from the run folder's checkpoint")
    overwrite: bool = setting(False, "start afresh in a run folder that holds a finished model or an earlier "
                                     "run's files, replacing them")
    progress: bool = setting(True, "show a progress bar")
    max_steps_per_epoch: Optional[int] = setting(None, "cap the steps of each epoch (smoke tests and CI)")

    def replace(self, *positional, **changes) -> "RunConfig":
        """A copy with ``changes``, checked by :func:`validate`; ``weights`` names only the weights that change,
        and so does ``data_options`` while ``data`` stays the same. ``method`` is stored in its one spelling
        (lower case, no spaces: ``"KD, cd + gkd"`` -> ``"kd,cd+gkd"``), so one method has one run folder."""
        if positional:
            raise ConfigError(f"replace() takes settings as keywords, e.g. cfg.replace(epochs=3), got "
                              f"{shown(positional[0])}; a dict of settings goes in as cfg.replace(**settings).")
        known = {f.name for f in dataclasses.fields(RunConfig)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; valid settings are {', '.join(sorted(known))}.")
        for name, value in changes.items():
            if isinstance(value, os.PathLike) and _KINDS[name] in ("str", "Optional[str]"):
                changes[name] = os.fspath(value)  # a pathlib.Path for a folder is fine; config.json stores text
        milestones = changes.get("lr_milestones")
        if isinstance(milestones, Iterable) and not isinstance(milestones, (str, bytes)):
            # A list (JSON, the CLI) becomes the field's tuple, NumPy integers ints; validate() judges the rest.
            changes["lr_milestones"] = tuple(int(m) if is_whole(m) else m for m in milestones)
        if isinstance(changes.get("weights"), dict):
            # Only the named terms change; the recipe's other weights stay.
            changes["weights"] = {**self.weights, **changes["weights"]}
        same_data = changes.get("data", self.data) == self.data
        if same_data and isinstance(changes.get("data_options"), dict):
            # Like weights: only the named options change (another data set's options would not apply).
            changes["data_options"] = {**self.data_options, **changes["data_options"]}
        if isinstance(changes.get("method"), str):
            changes["method"] = _canonical_methods(changes["method"])
        if changes.get("reference_compat") is True:
            # One switch for every reference behaviour; one named False as well is a contradiction validate() reports.
            changes = {**{name: True for name in REFERENCE_SWITCHES}, **changes}
        new = dataclasses.replace(self, **changes)
        validate(new)
        return new


def _canonical_methods(method: str) -> str:
    """'KD, cd + gkd' -> 'kd,cd+gkd': one spelling per method (its run folder is named after it)."""
    methods = (m.split("+") for m in method.split(","))
    return ",".join(s for s in ("+".join(t.strip().lower() for t in m if t.strip()) for m in methods) if s)


def parse_method(method: str) -> Tuple[str, ...]:
    """'cd+gkd+edt' -> ('ce', 'cd', 'gkd', 'edt'); unknown terms, and 'edt' without 'cd', raise ConfigError."""
    if not isinstance(method, str):
        raise ConfigError(f"a method is a string such as 'kd' or 'cd+gkd+edt', got {method!r}.")
    names = [t.strip().lower() for t in method.split("+") if t.strip()]
    if names in (["student"], ["baseline"]):
        names = ["ce"]
    known = terms.methods()
    unknown = [t for t in names if t not in known]
    if unknown or not names:
        raise ConfigError(
            f"unknown method term(s) {unknown or [method]!r} in {method!r}; combine {', '.join(known)} with '+', "
            "e.g. 'kd' or 'cd+gkd+edt' ('student' trains with cross-entropy only)."
        )
    if terms.EDT in names and "cd" not in names:
        # EDT only sets the weights of ce, cd and gkd: without cd it switches cross-entropy (and GKD) off for the
        # warm-up and nothing trains (loss 0), then changes nothing.
        raise ConfigError(
            f"EDT is a schedule of the CD weight (a CD-only warm-up, then a decaying CD weight), not a loss, so "
            f"{method!r} has nothing for it to schedule; combine it with cd, e.g. 'cd+edt' or 'cd+gkd+edt'."
        )
    if "ce" not in names:
        names.insert(0, "ce")
    return tuple(dict.fromkeys(names))


RECIPES: Registry = Registry("recipe")

RECIPES.register("cifar100", RunConfig(), locked=True)
# CIFAR-100 sized for Colab's free T4: the paper's data, augmentation, losses and
# optimiser, a smaller CIFAR-stem pair and 30 epochs (LR milestones and the EDT
# staircase at the same fractions of the run). cdlib_bench.estimate projects about 19 min
# for the teacher and at most 15 min per distilled student on a T4 (fp16, 15 % of peak).
RECIPES.register("cifar100-colab", RunConfig(
    student="cifar_resnet18",
    teacher="cifar_resnet34",
    epochs=30,
    lr_milestones=(9, 18, 24),  # the paper's 60, 120, 160 of 200 epochs, scaled
    run_dir="runs/cifar100-colab",
), locked=True)
RECIPES.register("imagenet", RunConfig(
    data="imagenet",
    data_root="data/imagenet",
    student="resnet18",
    teacher="resnet34",
    teacher_pretrained=True,
    weights={**terms.default_weights(), "gkd": 1.0},
    schedule="paper-imagenet",
    epochs=100,
    batch_size=256,
    weight_decay=1e-4,
    lr_milestones=(30, 60, 90),
    lr_gamma=0.1,
    num_workers=8,
    run_dir="runs/imagenet",
), locked=True)
RECIPES.register("demo", RunConfig(
    data="digits",
    data_root=None,
    # Half the digits for testing (~900 images) so a 1-point gap is ~9 images,
    # and a student narrow enough (4..32 channels) that the teacher has something to teach.
    # 20 epochs and a ResNet10 teacher keep the whole `cdlib distill --recipe demo` under a
    # minute on a 2-core CPU (49 s measured; 30 epochs with a ResNet18 teacher took ~2 min).
    data_options={"test_fraction": 0.5},
    student="cifar_resnet10_w4",
    teacher="cifar_resnet10_w16",
    method="student,kd,cd+gkd+edt",
    epochs=20,
    batch_size=64,
    lr=0.05,
    lr_milestones=(13, 17),
    num_workers=0,
    run_dir="runs/demo",
), locked=True)
RECIPES.register("cpu-study", RunConfig(
    data="digits",
    data_root=None,
    # The reference CIFAR-100 recipe in miniature (results/cpu-study/README.md maps every epoch).
    # Task, chosen by measurement: each 12-pixel digit at a random spot of a 20x20 canvas with
    # 3 fragments of other digits (cluttered MNIST, Jaderberg et al. 2015), half the digits for
    # training; each test digit under 2 clutter draws (1,796 test images from 898 digits).
    data_options={"test_fraction": 0.5, "canvas": 20, "clutter": 3, "test_draws": 2},
    image_size=12,
    student="cifar_resnet10_w8",
    teacher="cifar_resnet10_w16",
    method="student,kd,gkd,cd,cd+kd,cd+gkd,cd+gkd+edt",
    # In proportion to the reference's 200 epochs: LR x0.2 after 30 %, 60 % and 80 % of the run,
    # and the staircase scaled with it, so the CD-only warm-up ends at the first LR drop (epoch
    # 18 of 60, as 60 of 200) and lambda_CD decays at 18 and 48 (60 and 160).
    epochs=60,
    batch_size=64,
    lr=0.05,
    lr_milestones=(18, 36, 48),
    # KD at GKD's temperature and weight (the reference's CIFAR-100 GKD: T = 1, weight 0.1),
    # so that `gkd` vs `kd` differ only in GKD's mask.
    kd_temperature=1.0,
    weights={**terms.default_weights(), "kd": 0.1},
    num_workers=0,
    run_dir="runs/cpu-study",
), locked=True)


names = RECIPES.names  # the recipe names, sorted


# Each setting's kind, as its annotation spells it (the annotations are strings here).
_KINDS: Dict[str, str] = {f.name: str(f.type) for f in dataclasses.fields(RunConfig)}


_KIND_CHECKS = {
    "int": (is_whole, "a whole number"),
    "Optional[int]": (lambda v: v is None or is_whole(v), "a whole number or None"),
    "float": (is_number, "a number a float can hold"),
    "bool": (lambda v: isinstance(v, bool), "True or False"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "Optional[str]": (lambda v: v is None or isinstance(v, str), "a string or None"),
    "Dict[str, Any]": (lambda v: isinstance(v, dict), "a dict"),
    "Dict[str, float]": (lambda v: isinstance(v, dict), "a dict of loss term -> weight"),
    "Tuple[int, ...]": (lambda v: isinstance(v, tuple) and all(map(is_whole, v)), "a list of whole epoch numbers"),
}


def _check_types(cfg: RunConfig) -> None:
    """Every setting has the kind its annotation names: ``epochs="3"`` or ``batch_size=2.5``
    fails here, with the setting's name, rather than as a TypeError deep in the trainer."""
    for name, kind in _KINDS.items():
        value = getattr(cfg, name)
        check, wanted = _KIND_CHECKS[kind]
        if not check(value):
            raise ConfigError(f"{name} must be {wanted}, got {shown(value)} ({type(value).__name__}); "
                              f"e.g. {name}={getattr(RunConfig(), name)!r}.")


def validate(cfg: RunConfig) -> None:
    """Check every setting that can be checked without data or a GPU, so a typo
    fails in a second instead of after the teacher has trained for an hour."""
    from . import data, models, schedules

    _check_types(cfg)
    _check_methods(cfg.method)
    for name, (least, most, example) in _WHOLE_BOUNDS.items():
        value = getattr(cfg, name)
        if value is not None and value < least:
            said = "batch size" if name == "batch_size" else name  # as the data loader says it
            raise ConfigError(f"{said} must be at least {least}, got {value}; e.g. {name}={example}.")
        if value is not None and most is not None and value > most:
            raise ConfigError(f"{name} must be at most {most}, got {shown(value)}; e.g. {name}={example}.")
    for name in _POSITIVE + _NON_NEGATIVE:
        value, positive = getattr(cfg, name), name in _POSITIVE
        if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
            raise ConfigError(f"{name} must be a {'positive' if positive else 'non-negative'}, finite number, "
                              f"got {value}; e.g. {name}={getattr(RunConfig(), name)}.")
    early = [m for m in cfg.lr_milestones if m < 1]
    if early:
        raise ConfigError(f"lr_milestones are epoch numbers from 1 on (the LR decays after that epoch), got {early}.")
    late = [m for m in cfg.lr_milestones if m > cfg.epochs]
    if late:
        raise ConfigError(
            f"lr_milestones {shown(late)} lie after the last of {cfg.epochs} epochs, so the learning rate would never decay "
            f"there; pass milestones up to {cfg.epochs}, or change epochs through recipes.get(name, epochs=...) "
            f"(CLI: --epochs alone), which moves the recipe's milestones with it."
        )
    if cfg.amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"amp must be one of auto, bf16, fp16, off; got {cfg.amp!r}.")
    if not cfg.run_dir.strip():
        raise ConfigError(f"run_dir must name a folder, got {cfg.run_dir!r} (that would write into the current "
                          "folder); e.g. run_dir='runs/demo'.")
    _check_seed_and_device(cfg)
    for role in ("student", "teacher"):
        models.MODELS.get(getattr(cfg, role), role=f"{role} model")
    data.DATA_SETS.get(cfg.data)
    schedules.SCHEDULES.get(cfg.schedule, role="EDT schedule")
    _check_data_options(cfg)
    known = terms.loss_terms()
    unknown_weights = sorted(set(cfg.weights) - set(known))
    if unknown_weights:
        raise ConfigError(f"unknown loss weight(s) {unknown_weights}; weights exist for {', '.join(known)}.")
    bad = [f"{t}={shown(w)}" for t, w in cfg.weights.items() if not (is_finite(w) and w >= 0)]
    if bad:
        raise ConfigError(f"loss weights must be finite numbers >= 0, got {', '.join(bad)}; e.g. cd=6.0.")
    _check_reference_switches(cfg)


def _check_methods(method: str) -> None:
    """Each method parses, and none comes twice: train.run would train the first, then refuse the
    second (its folder holds a checkpoint) and the comparison table would be lost."""
    methods = [m for m in method.split(",") if m.strip()]
    if not methods:
        raise ConfigError(f"method {method!r} names no method; e.g. 'kd' or 'student,kd,cd+gkd+edt'.")
    seen: Dict[frozenset, str] = {}
    for one in methods:
        key = frozenset(parse_method(one))
        if key in seen:
            raise ConfigError(f"method {method!r} names the same method more than once ({seen[key].strip()!r} and "
                              f"{one.strip()!r}); list each method once.")
        seen[key] = one


def _check_seed_and_device(cfg: RunConfig) -> None:
    import torch

    from .resume import check_seed

    check_seed(cfg.seed)
    # Only the spelling: whether this machine has the device is for the run to find out (a config may be
    # written on a laptop for a GPU machine).
    try:
        kind = "auto" if cfg.device == "auto" else torch.device(cfg.device).type
    except (RuntimeError, ValueError):
        kind = None
    if kind not in ("auto", "cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {cfg.device!r}; use auto, cpu, cuda, cuda:N or mps.")


# The numeric options of the in-memory data sets: (whole number?, least, most or None). Checked here, before
# any image is made: digits and synthetic build their sets in memory, and a wrong type or size there fails
# as a RuntimeError in torch, or asks for terabytes.
_SEED_RANGE = (True, 0, 2**32 - 1)
_DATA_OPTION_RANGES = {
    "digits": {"test_fraction": (False, 0.0, 1.0), "train_per_class": (True, 1, None), "seed": _SEED_RANGE,
               "canvas": (True, 1, MAX_IMAGE_SIZE), "clutter": (True, 0, 1000), "clutter_size": (True, 1, None),
               "test_draws": (True, 1, 100)},
    "synthetic": {"num_classes": (True, 2, 100_000), "train_per_class": (True, 1, 100_000),
                  "test_per_class": (True, 1, 100_000), "seed": _SEED_RANGE},
}
_DIGITS = 1797  # images in scikit-learn's digits


def _check_data_options(cfg: RunConfig) -> None:
    from . import data

    options = cfg.data_options
    odd = [name for name in options if not isinstance(name, str)]
    if odd:
        raise ConfigError(f"data_options option names must be strings such as 'seed', got {shown(odd[0])}.")
    data.check_options(cfg.data, options)
    for name, (whole, least, most) in _DATA_OPTION_RANGES.get(cfg.data, {}).items():
        if name not in options:
            continue
        value = options[name]
        fits = is_whole(value) if whole else is_finite(value)
        if not fits or value < least or (most is not None and value > most):
            kind = "a whole number" if whole else "a number"
            span = f"from {least} to {most}" if most is not None else f"of at least {least}"
            raise ConfigError(f"data_options {name} must be {kind} {span}, got {shown(value)}; e.g. "
                              f"--data-options {name}={least if whole else 0.2}.")
    estimate = _in_memory_bytes(cfg)
    if estimate > MAX_IN_MEMORY_BYTES:
        raise ConfigError(
            f"{cfg.data} with image_size={cfg.image_size} and data_options {cfg.data_options} would build an "
            f"in-memory data set of about {estimate / 2**30:,.0f} GiB (at most {MAX_IN_MEMORY_BYTES // 2**30} GiB); "
            "use smaller images (image_size, canvas) or fewer of them."
        )


def _in_memory_bytes(cfg: RunConfig) -> float:
    """About the peak bytes of building a digits or synthetic set (float images while resizing and
    cluttering, the uint8 RGB set, a float copy for its statistics): ~20 bytes per pixel of each image."""
    o, size = cfg.data_options, cfg.image_size or 16
    if cfg.data == "digits":
        side = o.get("canvas") or size
        test = o.get("test_fraction", 0.2) if o.get("train_per_class") is None else 0.9
        return _DIGITS * (1 + test * (o.get("test_draws", 1) - 1)) * side**2 * 20
    if cfg.data == "synthetic":
        images = o.get("num_classes", 10) * (o.get("train_per_class", 100) + o.get("test_per_class", 20))
        return images * 3 * size**2 * 10
    return 0.0


def _check_reference_switches(cfg: RunConfig) -> None:
    pad_mode = cfg.data_options.get("pad_mode", "reflect")  # a known one: _check_data_options ran before
    if not cfg.reference_compat:
        return
    opposite = [f"{name}=False" for name in REFERENCE_SWITCHES if not getattr(cfg, name)]
    opposite += [f"pad_mode={pad_mode!r}"] if pad_mode != "reflect" else []
    if opposite:
        raise ConfigError(
            f"reference_compat=True turns on every reference behaviour ({', '.join(REFERENCE_SWITCHES)}, reflect "
            f"padding), but {', '.join(opposite)} asks for the opposite; drop reference_compat and set the switches "
            "one by one."
        )


def scale_milestones(milestones: Tuple[int, ...], from_epochs: int, to_epochs: int) -> Tuple[int, ...]:
    """LR milestones at the same fractions of a run of ``to_epochs`` as of ``from_epochs``:
    (60, 120, 160) of 200 epochs -> (15, 30, 40) of 50. Never earlier than epoch 1."""
    for name, value in (("from_epochs", from_epochs), ("to_epochs", to_epochs)):
        if not is_whole(value) or not 1 <= value <= MAX_EPOCHS:
            raise ConfigError(f"scale_milestones: {name} must be a whole number from 1 to {MAX_EPOCHS}, "
                              f"got {shown(value)}.")
    return tuple(max(1, round(m * to_epochs / from_epochs)) for m in milestones)


def get(name: str, **overrides) -> RunConfig:
    """A recipe by name, with any field overridden. ``epochs`` without ``lr_milestones`` scales the
    recipe's milestones (:func:`scale_milestones`), which the shorter run would otherwise never reach;
    another ``data`` without ``data_options`` drops the recipe's data options (they are its data set's)."""
    base = RECIPES.get(name)
    epochs = overrides.get("epochs")
    # Out of range, validate() says so; scaling first would overflow (10**400 epochs) or divide by 0.
    if is_whole(epochs) and 1 <= epochs <= MAX_EPOCHS and overrides.get("lr_milestones") is None:
        overrides["lr_milestones"] = scale_milestones(base.lr_milestones, base.epochs, epochs)
    if overrides.get("data", base.data) != base.data and "data_options" not in overrides:
        overrides["data_options"] = {}
    return base.replace(**overrides)
