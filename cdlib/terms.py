"""The loss terms a method can combine: names, what each needs, default weights.

:meth:`cdlib.distiller.Distiller.forward` computes each term with an explicit
call; this table says which terms exist (for method strings such as
``"cd+gkd+edt"`` and the CLI's help), which need the teacher or the stage
feature maps (so the trainer knows whether to build a teacher and the
distiller whether to run it) and each term's default weight. A new method is a
loss function in :mod:`cdlib.losses`, a line in ``Distiller.forward`` and a row
here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Tuple

from .errors import ConfigError

__all__ = ["LossTerm", "TERMS", "EDT", "SCHEDULED", "get", "loss_terms", "methods", "needs_teacher",
           "needs_features", "default_weights"]


@dataclass(frozen=True)
class LossTerm:
    name: str
    description: str
    needs_teacher: bool
    needs_features: bool  # the stage feature maps, not only the logits
    default_weight: float  # the CIFAR-100 recipe's weight; recipes may override


TERMS: Tuple[LossTerm, ...] = (
    LossTerm("ce", "cross-entropy with the labels", False, False, 1.0),
    LossTerm("kd", "knowledge distillation (Hinton et al. 2015)", True, False, 1.0),
    LossTerm("gkd", "guided KD: KD on the samples the teacher gets right", True, False, 0.1),
    LossTerm("cd", "channel distillation: channel attention through connectors", True, True, 6.0),
    LossTerm("at", "attention transfer (Zagoruyko & Komodakis 2017)", True, True, 1000.0),
    LossTerm("fitnets", "FitNets hint on the middle stage (Romero et al. 2015)", True, True, 100.0),
)

# "edt" is not a loss: it makes the weights of SCHEDULED follow an EDT schedule.
EDT = "edt"
SCHEDULED: Tuple[str, ...] = ("ce", "cd", "gkd")
_BY_NAME: Dict[str, LossTerm] = {t.name: t for t in TERMS}


def loss_terms() -> Tuple[str, ...]:
    """The names of the loss terms, in the table's order."""
    return tuple(_BY_NAME)


def methods() -> Tuple[str, ...]:
    """What a method string may combine: the loss terms and "edt"."""
    return loss_terms() + (EDT,)


def get(name: str) -> LossTerm:
    """The row of loss term ``name``."""
    if isinstance(name, str) and name in _BY_NAME:
        return _BY_NAME[name]
    raise ConfigError(f"unknown loss term {name!r}; choose from {', '.join(loss_terms())}.")


def needs_teacher(terms: Iterable[str]) -> bool:
    """Whether any of ``terms`` (names; "edt" and unknown names ignored) needs the teacher's outputs."""
    return any(_BY_NAME[t].needs_teacher for t in terms if t in _BY_NAME)


def needs_features(terms: Iterable[str]) -> bool:
    """Whether any of ``terms`` needs stage feature maps."""
    return any(_BY_NAME[t].needs_features for t in terms if t in _BY_NAME)


def default_weights() -> Dict[str, float]:
    """A fresh dict term -> default weight."""
    return {t.name: t.default_weight for t in TERMS}
