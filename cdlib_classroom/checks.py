"""The instant checks students call from the exercise notebooks: run a function and say, in plain
words, what is wrong.

>>> from cdlib_classroom import checks
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

The checks, their cases and catalogues live with the rest of each exercise, one
module per exercise (:mod:`cdlib_classroom.cd_loss`, ...); the exercise records in
:mod:`cdlib_classroom.exercises` hold them as data. The checks use their own random
generator: they never change the global torch random state, and every run sees the
same inputs.
"""

from __future__ import annotations

from .cd_loss import check_cd_loss
from .checking import CheckFailed
from .compare import compare_schedules
from .connector import check_channel_attention, check_connector
from .edt_schedule import check_schedule, schedule_fingerprint
from .gkd_loss import check_gkd_loss
from .kd_loss import check_kd_loss

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
]
