"""An exercise as data: one record that the instant checks and the grader both read.

An :class:`Exercise` names the function students write and its signature; holds
the public check with its cases and catalogues of named mistakes
(:class:`Mistake`); and the hidden cases with the :class:`Question` s they are
scored on. Each question groups hidden cases and earns its points when the
student's answer gets every one of them right (all or nothing, so a grade is
easy to explain); its diagnosis names the first case it got wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, List, Mapping, Optional, Sequence, Tuple

import torch

from cdlib.errors import ConfigError

__all__ = ["Mistake", "Question", "Verdict", "AllAnswers", "Exercise", "CLASSROOM"]

CLASSROOM = "cdlib_classroom"  # holds every exercise's answers: never callable from a graded answer


@dataclass(frozen=True)
class Mistake:
    """One usual wrong answer: a short ``name``, the ``diagnosis`` a student reads, and ``wrong``,
    a wrong implementation with the student's signature (run in float64 on the case's inputs)."""

    name: str
    diagnosis: str
    wrong: Callable[..., torch.Tensor]


@dataclass(frozen=True)
class AllAnswers:
    """Every hidden case and what the answer did on it, for rules about a whole run (exercise 3)."""

    cases: Sequence[dict]
    outcomes: Mapping[str, dict]  # case id -> outcome


# A check of one hidden case: (case, its outcome, all cases and outcomes) -> None when right, else what is
# wrong, in words.
CaseCheck = Callable[[dict, dict, AllAnswers], Optional[str]]


@dataclass(frozen=True)
class Question:
    name: str
    points: float
    what: str  # one line: what a student must get right for these points
    cases: Tuple[str, ...]  # ids of the hidden cases it is judged on
    check: CaseCheck


@dataclass(frozen=True)
class Verdict:
    question: str
    points: float
    max_points: float
    diagnosis: str


@dataclass(frozen=True)
class Exercise:
    """One exercise: what students write, how the notebook checks it, how the grader scores it."""

    name: str  # the notebook's file stem, e.g. "exercise1_cd_loss"
    function: str  # the function students write, e.g. "my_cd_loss"
    signature: str  # as the task states it, for messages
    check: Callable  # the public check the notebook calls
    cases: Tuple  # the public check's cases
    mistakes: Mapping[str, Tuple[Mistake, ...]]  # catalogues of named mistakes, by the case kind they are matched on
    questions: Tuple[Question, ...]  # what the grader scores, with default points
    hidden_cases: Callable[[], List[dict]]  # the grader's cases, with their right answers
    forbidden_modules: Tuple[str, ...]  # cdlib's implementation of the exercise, and the classroom
    extra_names: Tuple[str, ...] = ()  # other functions or classes graded (a hidden case's "function" names which)
    # How the grader runs the public check on the graded function (default: check(fn, verbose=False)).
    check_submission: Optional[Callable[[Callable], None]] = None
    # Public checks of the extra names, (name, check): exercise 5 checks MyConnector too.
    extra_checks: Tuple[Tuple[str, Callable], ...] = ()

    @property
    def names(self) -> Tuple[str, ...]:
        return (self.function,) + self.extra_names

    @property
    def max_points(self) -> float:
        return sum(q.points for q in self.questions)

    def run_check(self, fn: Callable) -> None:
        """The public check on the graded function, quietly; raises CheckFailed as the notebook would."""
        if self.check_submission is not None:
            self.check_submission(fn)
        else:
            self.check(fn, verbose=False)

    def public_checks(self) -> List[Tuple[str, Callable[[Callable], None]]]:
        """(graded name, its public check, quiet) for every public check the notebook runs."""
        return [(self.function, self.run_check)] + [(name, lambda fn, c=check: c(fn, verbose=False))
                                                   for name, check in self.extra_checks]

    def with_points(self, points: Mapping[str, float]) -> "Exercise":
        """The same exercise with the points of some questions replaced."""
        unknown = sorted(set(points) - {q.name for q in self.questions})
        if unknown:
            raise ConfigError(
                f"the grading metadata of {self.name} gives points for unknown question(s) {', '.join(unknown)}; "
                f"its questions are {', '.join(q.name for q in self.questions)}."
            )
        for name, value in points.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"the grading metadata of {self.name} gives question {name} {value!r} points; "
                                  "points must be numbers >= 0.")
        return replace(self, questions=tuple(replace(q, points=float(points.get(q.name, q.points)))
                                             for q in self.questions))

    def score(self, cases: Sequence[dict], outcomes: Sequence[dict]) -> List[Verdict]:
        """One verdict per question, from what the answer did on the hidden cases."""
        by_id = {o["id"]: o for o in outcomes}
        case_by_id = {c["id"]: c for c in cases}
        everything = AllAnswers(cases, by_id)
        verdicts = []
        for q in self.questions:
            problem = None
            for case_id in q.cases:
                outcome = by_id.get(case_id, {"error": "no outcome recorded"})
                problem = q.check(case_by_id[case_id], outcome, everything)
                if problem:
                    problem = f"{case_by_id[case_id]['label']}: {problem}"
                    break
            verdicts.append(Verdict(q.name, 0.0 if problem else q.points, q.points, problem or "right"))
        return verdicts

    def zero(self, diagnosis: str) -> List[Verdict]:
        """Every question at 0 with the same diagnosis (a notebook that could not be graded)."""
        return [Verdict(q.name, 0.0, q.points, diagnosis) for q in self.questions]
