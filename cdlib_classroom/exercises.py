"""The exercises, one record each (:class:`cdlib_classroom.record.Exercise`), by their notebook's file stem.

The instant checks and the grader both read these records: ``cdlib grade ASSIGNMENT`` takes the name of one.
"""

from __future__ import annotations

from typing import Dict, List

from cdlib.errors import ConfigError

from . import cd_loss, connector, edt_schedule, gkd_loss, kd_loss
from .record import Exercise

__all__ = ["EXERCISES", "exercise", "names"]

EXERCISES: Dict[str, Exercise] = {
    e.name: e for e in (cd_loss.EXERCISE, gkd_loss.EXERCISE, edt_schedule.EXERCISE, kd_loss.EXERCISE,
                        connector.EXERCISE)
}


def names() -> List[str]:
    return sorted(EXERCISES)


def exercise(name: str) -> Exercise:
    """An exercise's record by its notebook's file stem, e.g. ``exercise("exercise1_cd_loss")``."""
    if name not in EXERCISES:
        raise ConfigError(f"unknown exercise {name!r}; choose one of {', '.join(names())}.")
    return EXERCISES[name]
