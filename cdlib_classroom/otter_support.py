"""What the tests of an Otter-Grader export call (see :mod:`cdlib_classroom.otter_export`).

``public_check`` runs the notebook's public check(s) and raises their message, so ``grader.check("q1")``
shows the named mistake (an exception, not an Otter ``failure_message``: a ``"`` in one breaks Otter's
generated tests). ``hidden_case`` judges one hidden case of ``cdlib grade`` with the same code: the answer
is called on every hidden case once per kernel (with cdlib's implementation marked and watched, see
:mod:`cdlib_classroom.grading.poison`), and the case's question check runs on the outcome. Otter runs these
tests inside the student's kernel: unlike ``cdlib grade`` nothing here is out of the student's reach.
"""

from __future__ import annotations

import random
from typing import Dict, Tuple

from .checking import CheckFailed
from .exercises import exercise
from .record import AllAnswers

_CACHE: Dict[Tuple, tuple] = {}


def public_check(name: str, namespace: dict) -> None:
    task = exercise(name)
    messages = []
    for fn_name, check in task.public_checks():
        fn = namespace.get(fn_name)
        if not callable(fn):
            messages.append(f"{fn_name} is not defined: run the cell that defines it.")
            continue
        try:
            check(fn)
        except CheckFailed as exc:
            messages.append(str(exc))
    if messages:
        raise AssertionError("\n".join(messages))


def _outcomes(name: str, namespace: dict) -> tuple:
    from .grading.grader import case_inputs, marked_cases
    from .grading.poison import Marks
    from .grading.run_submission import CallWatch, call_case

    task = exercise(name)
    graded = {n: namespace.get(n) for n in task.names}
    key = (name,) + tuple(id(f) for f in graded.values())
    if key not in _CACHE:
        cases = task.hidden_cases()
        factor = 1.0 + random.uniform(0.01, 0.03)
        watch, marks = CallWatch(task.forbidden_modules), Marks(factor)
        outcomes = []
        try:
            for case in cases:
                fn = graded.get(case.get("function", task.function))
                if not callable(fn):
                    missing = case.get("function", task.function)
                    outcomes.append({"id": case["id"], "error": f"{missing} is not defined"})
                    continue
                marks.grading = True
                try:
                    outcomes.append(call_case(fn, case_inputs(case), watch))
                finally:
                    marks.grading = False
        finally:
            marks.remove()
        used = sorted(watch.seen | marks.entered) or marked_cases(cases, outcomes, factor)
        _CACHE[key] = (cases, {o["id"]: o for o in outcomes}, used)
    return _CACHE[key]


def hidden_case(name: str, question: str, case_id: str, namespace: dict) -> None:
    """Raise AssertionError with the diagnosis when the answer gets hidden case ``case_id`` of ``question``
    wrong (judged as ``cdlib grade`` judges it)."""
    task = exercise(name)
    cases, outcomes, used = _outcomes(name, namespace)
    if used:
        raise AssertionError(f"the answer uses cdlib's own implementation ({', '.join(used[:3])}): the exercise is "
                             "to write it yourself.")
    q = next(q for q in task.questions if q.name == question)
    case = next(c for c in cases if c["id"] == case_id)
    problem = q.check(case, outcomes.get(case_id, {"error": "no outcome recorded"}), AllAnswers(cases, outcomes))
    if problem:
        raise AssertionError(f"{case['label']}: {problem}")
