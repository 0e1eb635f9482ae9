"""Checks for the exercises: run a student's function and say, in plain words, what is wrong.

>>> from cdlib import checks
>>> checks.check_cd_loss(my_cd_loss)          # exercise 1
>>> checks.check_gkd_loss(my_gkd_loss)        # exercise 2
>>> checks.check_schedule(my_schedule, 30)    # exercise 3
>>> checks.check_kd_loss(my_kd_loss)          # exercise 4
>>> checks.check_channel_attention(my_channel_attention)   # exercise 5
>>> checks.check_connector(MyConnector)                    # exercise 5

Each check feeds the function random and adversarial inputs (different spatial
sizes per stage, a batch where the teacher is wrong on every sample, very large
logits, fractional epochs ...) and compares it with the library
(:func:`cdlib.losses.cd_loss`, :func:`cdlib.losses.gkd_loss`) or with the rules an
EDT schedule must follow. A pass prints one line. A failure raises
:class:`CheckFailed` whose message names the mistake — "you summed where the paper
averages", "forgot the T^2 factor" — found by comparing the answer with a
catalogue of the usual wrong implementations on the same inputs; an error in the
student's code is reported as that error.

One module per exercise (:mod:`.cd_loss`, :mod:`.gkd_loss`, :mod:`.schedule`, :mod:`.kd_loss`,
:mod:`.connector`),
each holding its cases and its catalogue of named mistakes as data
(:class:`Mistake` records: name, diagnosis, wrong implementation);
:func:`exercise` returns them by the exercise's notebook name, for a grader.
The checks use their own random generator: they never change the global torch
random state, and every run sees the same inputs.
"""

from __future__ import annotations

from typing import Dict

from ..errors import ConfigError
from . import cd_loss, connector, gkd_loss, kd_loss, schedule  # noqa: F401  (the exercise modules, by name)
from .cd_loss import check_cd_loss
from .common import CheckFailed, Exercise, Mistake
from .compare import compare_schedules
from .connector import check_channel_attention, check_connector
from .gkd_loss import check_gkd_loss
from .kd_loss import check_kd_loss
from .schedule import check_schedule, schedule_fingerprint

__all__ = [
    "CheckFailed",
    "check_cd_loss",
    "check_gkd_loss",
    "check_schedule",
    "check_kd_loss",
    "check_channel_attention",
    "check_connector",
    "schedule_fingerprint",
    "compare_schedules",
    "Mistake",
    "Exercise",
    "EXERCISES",
    "exercise",
]

EXERCISES: Dict[str, Exercise] = {
    "exercise1_cd_loss": Exercise(
        "exercise1_cd_loss", "my_cd_loss", "my_cd_loss(student_feats, teacher_feats) -> 0-d tensor", check_cd_loss,
        cd_loss.CASES + (cd_loss.SIZES_DIFFER, cd_loss.LARGE), {"value": cd_loss.MISTAKES}),
    "exercise2_gkd_loss": Exercise(
        "exercise2_gkd_loss", "my_gkd_loss",
        "my_gkd_loss(student_logits, teacher_logits, targets, temperature=1.0) -> 0-d tensor", check_gkd_loss,
        gkd_loss.CASES, {"temperature 1": gkd_loss.MISTAKES, "temperature 4": gkd_loss.TEMPERATURE_MISTAKES}),
    "exercise3_edt_schedule": Exercise(
        "exercise3_edt_schedule", "my_weights",
        "my_weights(epoch, epochs) -> {'ce': ..., 'cd': ..., 'gkd': ...}; checked as lambda epoch: my_weights(epoch, E)",
        check_schedule, (), {}),
    "exercise4_kd_loss": Exercise(
        "exercise4_kd_loss", "my_kd_loss", "my_kd_loss(student_logits, teacher_logits, T) -> 0-d tensor",
        check_kd_loss, kd_loss.CASES + (kd_loss.LARGE,), {"value at T=4": kd_loss.MISTAKES}),
    # Two things to write; the record names the first, and its catalogues cover both.
    "exercise5_connector": Exercise(
        "exercise5_connector", "my_channel_attention",
        "my_channel_attention(feature_map) -> (N, C) tensor; MyConnector(in_channels, out_channels) -> nn.Module "
        "(checked with check_connector)", check_channel_attention,
        connector.ATTENTION_CASES + connector.CONNECTOR_CASES,
        {"attention": connector.ATTENTION_MISTAKES, "connector output": connector.CONNECTOR_MISTAKES}),
}


def exercise(name: str) -> Exercise:
    """An exercise's function, check, cases and mistake catalogues, by its notebook's file stem."""
    if name not in EXERCISES:
        raise ConfigError(f"unknown exercise {name!r}; choose one of {', '.join(EXERCISES)}.")
    return EXERCISES[name]
