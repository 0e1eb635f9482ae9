"""Grading exercise notebooks with hidden cases: ``cdlib grade`` and its Python API.

>>> from cdlib_classroom import grading
>>> grades = grading.grade("exercise1_cd_loss", "submissions/", out="grades.csv", timeout=60)

Every notebook in the folder (file stem = student id) runs in its own process
and temporary folder, up to the cell that defines the exercise's function (see
:mod:`.notebook`); the function is then called on the exercise record's hidden
cases (:mod:`cdlib_classroom.exercises`) and judged, in the grader's process,
against the right answers computed there before the notebook ran. A notebook
that is blank, crashes, calls ``sys.exit`` or never ends gets 0 with a diagnosis
saying so; one whose function calls cdlib's own implementation (or the
classroom's) gets 0 too. Running notebooks needs IPython, a dependency of cdlib.
"""

from .grader import (
    CSV_COLUMNS,
    GradingError,
    GradingStopped,
    SubmissionGrade,
    grade,
    grade_submission,
    graded_exercise,
)

__all__ = [
    "CSV_COLUMNS",
    "GradingError",
    "GradingStopped",
    "SubmissionGrade",
    "grade",
    "grade_submission",
    "graded_exercise",
]
