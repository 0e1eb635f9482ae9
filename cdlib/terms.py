"""The table of loss terms: one row per term, read by every layer.

The distiller, the recipes, the trainer, the benchmark, the exercise checks and
the CLI all take the term names, which terms need the teacher or the stage
features, the default weights and how each loss is called from here. A new
method is one loss function in :mod:`cdlib.losses` and one row below.

Consumers read the table through the functions (``loss_terms()``, ``get()``,
...), which look at :data:`TERMS` when called, so a row added at run time (a
test, an exercise) reaches every layer. ``LOSS_TERMS`` and ``METHODS`` are the
shipped table's names, for reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Tuple

from .errors import ConfigError

__all__ = ["LossTerm", "TERMS", "LOSS_TERMS", "METHODS", "EDT", "SCHEDULED", "INPUTS", "get", "loss_terms",
           "methods", "needs_teacher", "needs_features", "default_weights"]

# What the distiller can hand a loss function, by name (LossTerm.inputs lists them in call order).
INPUTS: Dict[str, str] = {
    "logits": "the student's logits (N, classes)",
    "teacher_logits": "the teacher's logits (N, classes)",
    "targets": "the labels (N,)",
    "features": "the student's stage feature maps",
    "teacher_features": "the teacher's stage feature maps",
    "connected_features": "the student's stage maps through the connectors (teacher's channel counts)",
    "hint": "the student's FitNets hint stage through its regressor, as a one-element list",
    "teacher_hint": "the teacher's FitNets hint stage, as a one-element list",
    "kd_temperature": "RunConfig.kd_temperature",
    "gkd_temperature": "RunConfig.gkd_temperature",
}


@dataclass(frozen=True)
class LossTerm:
    name: str
    description: str
    function: str  # the function in cdlib.losses that computes it
    needs_teacher: bool
    needs_features: bool  # the stage feature maps, not only the logits
    default_weight: float  # the CIFAR-100 recipe's weight; recipes may override
    inputs: Tuple[str, ...]  # the function's positional arguments, names from INPUTS


TERMS: Tuple[LossTerm, ...] = (
    LossTerm("ce", "cross-entropy with the labels", "ce_loss", False, False, 1.0, ("logits", "targets")),
    LossTerm("kd", "knowledge distillation (Hinton et al. 2015)", "kd_loss", True, False, 1.0,
             ("logits", "teacher_logits", "kd_temperature")),
    LossTerm("gkd", "guided KD: KD on the samples the teacher gets right", "gkd_loss", True, False, 0.1,
             ("logits", "teacher_logits", "targets", "gkd_temperature")),
    LossTerm("cd", "channel distillation: channel attention through connectors", "cd_loss", True, True, 6.0,
             ("connected_features", "teacher_features")),
    LossTerm("at", "attention transfer (Zagoruyko & Komodakis 2017)", "at_loss", True, True, 1000.0,
             ("features", "teacher_features")),
    LossTerm("fitnets", "FitNets hint on the middle stage (Romero et al. 2015)", "fitnets_loss", True, True, 100.0,
             ("hint", "teacher_hint")),
)

# "edt" is not a loss: it makes the weights of SCHEDULED follow an EDT schedule.
EDT = "edt"
SCHEDULED: Tuple[str, ...] = ("ce", "cd", "gkd")

LOSS_TERMS: Tuple[str, ...] = tuple(t.name for t in TERMS)
METHODS: Tuple[str, ...] = LOSS_TERMS + (EDT,)


def loss_terms() -> Tuple[str, ...]:
    """The names of the loss terms in the table, in its order."""
    return tuple(t.name for t in TERMS)


def methods() -> Tuple[str, ...]:
    """What a method string may combine: the loss terms and "edt"."""
    return loss_terms() + (EDT,)


def get(name: str) -> LossTerm:
    """The row of loss term ``name``."""
    for term in TERMS:
        if term.name == name:
            return term
    raise ConfigError(f"unknown loss term {name!r}; choose from {', '.join(loss_terms())}.")


def _rows(names: Iterable[str]):
    known = {t.name: t for t in TERMS}
    return [known[n] for n in names if n in known]


def needs_teacher(terms: Iterable[str]) -> bool:
    """Whether any of ``terms`` (names; "edt" and unknown names ignored) needs the teacher's outputs."""
    return any(t.needs_teacher for t in _rows(terms))


def needs_features(terms: Iterable[str]) -> bool:
    """Whether any of ``terms`` needs stage feature maps."""
    return any(t.needs_features for t in _rows(terms))


def default_weights() -> Dict[str, float]:
    """A fresh dict term -> default weight."""
    return {t.name: t.default_weight for t in TERMS}
