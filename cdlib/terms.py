"""The table of loss terms: one row per term, read by every layer.

The distiller, the recipes, the trainer, the benchmark, the exercise checks and
the CLI all take the term names, which terms need the teacher or the stage
features, and the default weights from here. A new method is one loss
function in :mod:`cdlib.losses` and one row below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = ["LossTerm", "TERMS", "LOSS_TERMS", "METHODS", "EDT", "SCHEDULED", "needs_teacher", "needs_features",
           "default_weights"]


@dataclass(frozen=True)
class LossTerm:
    name: str
    description: str
    function: str  # the function in cdlib.losses (or torch.nn.functional for "ce") that computes it
    needs_teacher: bool
    needs_features: bool  # the stage feature maps, not only the logits
    default_weight: float  # the CIFAR-100 recipe's weight; recipes may override


TERMS: Tuple[LossTerm, ...] = (
    LossTerm("ce", "cross-entropy with the labels", "torch.nn.functional.cross_entropy", False, False, 1.0),
    LossTerm("kd", "knowledge distillation (Hinton et al. 2015)", "kd_loss", True, False, 1.0),
    LossTerm("gkd", "guided KD: KD on the samples the teacher gets right", "gkd_loss", True, False, 0.1),
    LossTerm("cd", "channel distillation: channel attention through connectors", "cd_loss", True, True, 6.0),
    LossTerm("at", "attention transfer (Zagoruyko & Komodakis 2017)", "at_loss", True, True, 1000.0),
    LossTerm("fitnets", "FitNets hint on the middle stage (Romero et al. 2015)", "fitnets_loss", True, True, 100.0),
)

# "edt" is not a loss: it makes the weights of SCHEDULED follow an EDT schedule.
EDT = "edt"
SCHEDULED: Tuple[str, ...] = ("ce", "cd", "gkd")

_BY_NAME: Dict[str, LossTerm] = {t.name: t for t in TERMS}
LOSS_TERMS: Tuple[str, ...] = tuple(_BY_NAME)
METHODS: Tuple[str, ...] = LOSS_TERMS + (EDT,)


def needs_teacher(terms) -> bool:
    """Whether any of ``terms`` (names; "edt" and unknown names ignored) needs the teacher's outputs."""
    return any(_BY_NAME[t].needs_teacher for t in terms if t in _BY_NAME)


def needs_features(terms) -> bool:
    """Whether any of ``terms`` needs stage feature maps."""
    return any(_BY_NAME[t].needs_features for t in terms if t in _BY_NAME)


def default_weights() -> Dict[str, float]:
    """A fresh dict term -> default weight."""
    return {t.name: t.default_weight for t in TERMS}
