"""Grading exercise notebooks with hidden cases: ``cdlib grade`` and its Python API.

>>> from cdlib import grading
>>> grades = grading.grade("exercise1_cd_loss", "submissions/", out="grades.csv", timeout=60)

Every notebook in the folder (file stem = student id) runs in its own process
and temporary folder, up to the cell that defines the exercise's function (see
:mod:`cdlib.grading.notebook`); the function is then called on hidden cases
(:mod:`cdlib.grading.loss_exercises` for exercises 1, 2 and 4,
:mod:`cdlib.grading.schedule_exercise` for 3, :mod:`cdlib.grading.connector_exercise`
for 5) and judged, in the grader's process, against reference computations
written there. A notebook that is blank, crashes, calls ``sys.exit`` or never
ends gets 0 with a diagnosis saying so; one whose function calls cdlib's own
implementation gets 0 too. Running notebooks needs IPython, which cdlib's
ipywidgets dependency installs (else: the ``book`` extra).
"""

from .assignments import Assignment, Question, Verdict
from .grader import (
    ASSIGNMENTS,
    CSV_COLUMNS,
    GradingError,
    SubmissionGrade,
    get_assignment,
    grade,
    grade_submission,
)

__all__ = [
    "ASSIGNMENTS",
    "CSV_COLUMNS",
    "Assignment",
    "GradingError",
    "Question",
    "SubmissionGrade",
    "Verdict",
    "get_assignment",
    "grade",
    "grade_submission",
]
