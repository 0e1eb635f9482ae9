"""Early Decay Teacher (EDT): loss weights as plain functions of the epoch.

A schedule is a callable ``schedule(epoch) -> {"ce": w, "cd": w, "gkd": w}``.
``epoch`` is 1-indexed. A fractional epoch (``epoch + step / steps_per_epoch``
with ``step`` counted from 0) gives per-step weights for the smooth schedules;
the paper's staircases only change at whole epochs, as in the reference code.

The presets (:data:`PRESETS` says what each is) are the reference staircases
``paper-cifar100`` and ``paper-imagenet`` with their CD-only warm-up, scaled
in proportion to another number of epochs; their warm-up and decay apart
(``*-warmup-only``, ``*-decay-only``); ``constant``, the no-EDT ablation; and
``exponential``, ``cosine`` and ``linear``, smooth decays between the CIFAR-100
staircase's end points, so that the shape is all an ablation changes.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from functools import partial
from typing import Callable, Dict

from .errors import MAX_EPOCHS, ConfigError, is_finite, is_whole, shown
from .registry import Registry

__all__ = ["Weights", "Schedule", "get", "names", "register", "staircase", "smooth", "paper_staircase",
           "PRESETS", "SHAPES", "SCHEDULES"]

Weights = Dict[str, float]
Schedule = Callable[[float], Weights]

CD_INITIAL = 6.0  # lambda_CD at the start of training, ImageNet and CIFAR alike.
CD_DECAY = 0.9  # factor applied at each staircase step.
CIFAR_GKD_WEIGHT = 0.1


def _check_epoch(epoch: float) -> None:
    if not (is_finite(epoch) and epoch >= 0):  # also rejects NaN, infinity and strings
        raise ConfigError(f"epoch must be a number, non-negative and finite (1-indexed), got {epoch!r}.")


def _check_fields(schedule) -> None:
    """The numbers a staircase or smooth schedule is made of: finite and >= 0 (epochs > 0), so a
    string or a NaN fails where it is given, not as a TypeError or a NaN weight mid-training."""
    for f in fields(schedule):
        value = getattr(schedule, f.name)
        if f.name == "milestones":
            if not isinstance(value, (tuple, list)) or not all(is_finite(m) and m >= 0 for m in value):
                raise ConfigError(f"milestones must be a tuple of epoch numbers, e.g. (60, 160), got {shown(value)}.")
        elif f.name != "shape":
            positive = f.name == "epochs"  # a run has a positive length; weights and warm-ups may be 0
            if not (is_finite(value) and (value > 0 if positive else value >= 0)):
                example = f.default if f.default is not MISSING else 1
                raise ConfigError(f"a schedule's {f.name} must be a {'positive' if positive else 'non-negative'}, "
                                  f"finite number, got {shown(value)}; e.g. {f.name}={example}.")


@dataclass(frozen=True)
class staircase:
    """The reference code's EDT: lambda_CD = cd0 * decay^k.

    ``k`` is the number of milestones passed: ``milestones`` are the epochs
    at which another decay step applies (epoch >= milestone). Cross-entropy
    and GKD weights are 0 for epoch <= warmup_epochs (CD-only warm-up), then
    ``ce`` and ``gkd``.
    """

    milestones: tuple
    warmup_epochs: int
    cd0: float = CD_INITIAL
    decay: float = CD_DECAY
    ce: float = 1.0
    gkd: float = 1.0

    def __post_init__(self) -> None:
        _check_fields(self)

    def __call__(self, epoch: float) -> Weights:
        _check_epoch(epoch)
        # Staircases move at whole epochs only: e + f (0 <= f < 1) is epoch e.
        whole = max(1, math.floor(epoch))
        k = sum(whole >= m for m in self.milestones)
        warm = whole <= self.warmup_epochs
        return {
            "ce": 0.0 if warm else self.ce,
            "cd": self.cd0 * self.decay**k,
            "gkd": 0.0 if warm else self.gkd,
        }


@dataclass(frozen=True)
class smooth:
    """A smooth CD decay from ``cd0`` (epoch 1) to ``cd_final`` (``epochs``).

    ``shape`` is ``"exponential"``, ``"cosine"``, ``"linear"`` or
    ``"constant"``. Cross-entropy and GKD weights are constant (no warm-up)
    unless ``warmup_epochs`` is set.
    """

    shape: str
    epochs: float
    cd0: float = CD_INITIAL
    cd_final: float = CD_INITIAL * CD_DECAY**2
    ce: float = 1.0
    gkd: float = 1.0
    warmup_epochs: float = 0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown decay shape {self.shape!r}; "
                              f"choose one of {sorted(SHAPES)}.")
        _check_fields(self)
        if (self.shape == "exponential"
                and (self.cd0 <= 0 or self.cd_final <= 0)):
            raise ConfigError("an exponential decay needs positive initial "
                              "and final CD weights.")

    def __call__(self, epoch: float) -> Weights:
        _check_epoch(epoch)
        progress = min(max((epoch - 1) / max(self.epochs - 1, 1), 0.0), 1.0)
        warm = epoch <= self.warmup_epochs
        return {
            "ce": 0.0 if warm else self.ce,
            "cd": SHAPES[self.shape](self.cd0, self.cd_final, progress),
            "gkd": 0.0 if warm else self.gkd,
        }


SHAPES: Dict[str, Callable[[float, float, float], float]] = {
    "constant": lambda start, end, p: start,
    "linear": lambda start, end, p: start + (end - start) * p,
    "cosine": lambda start, end, p: (
        end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))),
    "exponential": lambda start, end, p: start * (end / start) ** p,
}


def paper_staircase(paper_epochs: int, milestones: tuple, warmup: int,
                    gkd: float, **defaults) -> Callable[..., Schedule]:
    """A reference staircase; asked for another ``epochs``, its milestones
    scale in proportion."""

    def factory(epochs: int = paper_epochs, **kw) -> Schedule:
        scale = epochs / paper_epochs
        kw = {"gkd": gkd, **defaults, **kw}
        return staircase(
            # max(2, ...): epoch 1 always starts at cd0
            milestones=tuple(max(2, round(m * scale)) for m in milestones),
            warmup_epochs=round(warmup * scale),
            **kw,
        )

    return factory


PRESETS: Dict[str, Callable[..., Schedule]] = {
    # CIFAR-100, 200 epochs: decay at epochs 60 and 160, CE/GKD off for
    # e <= 60. The reference code weights GKD by 0.1 on CIFAR-100 and by 1
    # on ImageNet.
    "paper-cifar100": paper_staircase(
        200, (60, 160), 60, gkd=CIFAR_GKD_WEIGHT),
    # ImageNet, 100 epochs: lambda_CD = 6 * 0.9^floor(e/30), CE/GKD off for
    # e <= 30.
    "paper-imagenet": paper_staircase(100, (30, 60, 90), 30, gkd=1.0),
    # EDT's two parts apart, for the ablation the paper did not run: the
    # CIFAR-100 warm-up with a constant lambda_CD, and the CIFAR-100 decay
    # with cross-entropy and GKD on from epoch 1.
    "paper-cifar100-warmup-only": paper_staircase(
        200, (60, 160), 60, gkd=CIFAR_GKD_WEIGHT, decay=1.0),
    "paper-cifar100-decay-only": paper_staircase(
        200, (60, 160), 0, gkd=CIFAR_GKD_WEIGHT),
    # The authors' ImageNet CD + GKD configuration: its lambda_CD already
    # decays (their lrdv1, factor 0.9); EDT adds only the warm-up there.
    "paper-imagenet-decay-only": paper_staircase(
        100, (30, 60, 90), 0, gkd=1.0),
    # Smooth decays with the CIFAR-100 staircase's end points and GKD weight.
    **{shape: partial(smooth, shape, epochs=200, gkd=CIFAR_GKD_WEIGHT)
       for shape in ("constant", "linear", "cosine", "exponential")},
}


# The registry get() looks names up in: the shipped presets (fixed), then what register() adds.
SCHEDULES: Registry = Registry("schedule")
for _name, _factory in PRESETS.items():
    SCHEDULES.register(_name, _factory, locked=True)


names = SCHEDULES.names  # the names get() accepts, sorted


def register(name: str, factory: Callable[..., Schedule]) -> None:
    """Add a schedule factory ``factory(epochs=..., **overrides) -> schedule``.

    Registering a name again replaces the earlier factory (a notebook cell run
    twice); the shipped presets cannot be replaced, so ``paper-cifar100`` always
    means the paper's staircase.
    """
    if not callable(factory):
        raise ConfigError(
            f"register({name!r}, ...) needs a factory: a function epochs=..., **overrides -> schedule, "
            f"got {type(factory).__name__}; e.g. register({name!r}, lambda epochs=200, **kw: staircase((60,), 0, **kw))."
        )
    SCHEDULES.register(name, factory)


def get(name: str, epochs: int | None = None, **overrides) -> Schedule:
    """A schedule by name, optionally stretched to ``epochs`` and with weights overridden.

    ``get("paper-cifar100")`` is the reference staircase; ``get("cosine", epochs=30)``
    a cosine decay over 30 epochs from lambda_CD = 6 to 6 * 0.9^2. Keyword
    overrides (``cd0=``, ``gkd=``, ``ce=``...) change the weights.
    """
    factory = SCHEDULES.get(name)
    if epochs is not None and not (is_whole(epochs) and 1 <= epochs <= MAX_EPOCHS):
        raise ConfigError(f"a schedule's epochs must be a whole number from 1 to {MAX_EPOCHS} (the run's length), "
                          f"got {shown(epochs)}.")
    try:
        schedule = factory(**overrides) if epochs is None else factory(epochs=epochs, **overrides)
    except TypeError as exc:
        raise ConfigError(
            f"schedule {name!r} does not accept {sorted(overrides)} ({exc}); override only its weights, "
            "e.g. cd0=, ce= or gkd=."
        ) from None
    if not callable(schedule):
        raise ConfigError(f"the factory registered as schedule {name!r} returned a {type(schedule).__name__}, "
                          "not a schedule (a function epoch -> weights); make it return one, e.g. a staircase(...).")
    return schedule
