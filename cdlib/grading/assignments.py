"""What an assignment is to the grader: the function graded, its questions and their points,
the hidden cases and how an answer is judged.

Each question groups hidden cases; it earns its points when the student's
function gets every one of its cases right (all or nothing, so a grade is easy to
explain), and its diagnosis names the first case it got wrong. Points per
question come from the instructor notebook's metadata when it has them::

    "metadata": {"cdlib": {"grading": {"points": {"value_same_size": 3, ...}}}}

and from the defaults below otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError

# A check of one case: (case, its outcome, every case and outcome) -> None when right, else what is
# wrong, in words. The third argument serves rules about a whole run (exercise 3's schedules).
CaseCheck = Callable[[dict, dict, "AllAnswers"], Optional[str]]


@dataclass(frozen=True)
class AllAnswers:
    cases: Sequence[dict]
    outcomes: Mapping[str, dict]  # case id -> outcome


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
class Assignment:
    name: str  # the notebook's file stem, e.g. "exercise1_cd_loss"
    function: str  # the function students write, e.g. "my_cd_loss"
    signature: str  # as the task states it, for messages
    questions: Tuple[Question, ...]
    make_cases: Callable[[], List[dict]]
    forbidden_modules: Tuple[str, ...]  # cdlib's implementation of the exercise
    public_check: Dict[str, object] = field(default_factory=dict)  # cdlib.checks function the notebook runs
    extra_names: Tuple[str, ...] = ()  # other functions or classes graded (a case's "function" names which)

    @property
    def names(self) -> Tuple[str, ...]:
        return (self.function,) + self.extra_names

    @property
    def max_points(self) -> float:
        return sum(q.points for q in self.questions)

    def with_points(self, points: Mapping[str, float]) -> "Assignment":
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


def notebook_points(path: Path) -> Optional[Dict[str, float]]:
    """The points per question in an instructor notebook's metadata, or None if it gives none."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the instructor notebook {path} ({exc}); pass an existing .ipynb.") from None
    grading = (nb.get("metadata", {}).get("cdlib") or {}).get("grading") or {}
    points = grading.get("points")
    if points is None:
        return None
    if not isinstance(points, dict):
        raise ConfigError(f"{path}: metadata cdlib.grading.points must map question names to numbers.")
    return points


# ---------------------------------------------------------------------------- checks shared by the exercises


def output_problem(outcome: dict, want_graph: bool = True) -> Optional[str]:
    """What is wrong with the returned object as a loss (a 0-d float tensor in the graph), or None."""
    if "error" in outcome:
        if outcome.get("not_implemented"):
            return "not implemented yet (the function raises NotImplementedError)."
        return f"the function raised {outcome['error']}."
    kind = outcome.get("type")
    if kind != "Tensor":
        if "value" in outcome:
            return (f"returned a Python {kind} ({outcome['value']:.6g}), not a tensor: gradients cannot flow "
                    "through a plain number (no .item() or float(...)).")
        return f"returned a {kind}, not a scalar torch tensor."
    if outcome["shape"] and math.prod(outcome["shape"]) != 1:
        return f"returned a tensor of shape {tuple(outcome['shape'])}, not a single number."
    if not outcome["is_float"]:
        return f"returned an integer tensor ({outcome['dtype']}); a loss is a floating-point tensor."
    if want_graph and not outcome["connected"]:
        return "the result is not connected to the student's inputs (detached, .item(), torch.tensor(...) or no_grad)."
    return None


def close(got: float, want: float, rtol: float = 1e-4, atol: float = 1e-7) -> bool:
    return math.isfinite(got) and abs(got - want) <= atol + rtol * abs(want)


def value_problem(outcome: dict, want: float, rtol: float = 1e-4) -> Optional[str]:
    """Whether the returned number is the loss; a plain float counts here (its type costs elsewhere)."""
    if "error" in outcome or "value" not in outcome:
        return output_problem(outcome, want_graph=False) or "returned no number."
    got = outcome["value"]
    if not close(got, want, rtol=rtol):
        return f"returned {got:.6g}, the loss is {want:.6g}."
    return None


def grads_problem(outcome: dict, want: Sequence, scalar: bool = True) -> Optional[str]:
    """Compare the recorded gradients (of the result's sum) with the reference ones (float64 tensors)."""
    if scalar or "error" in outcome:
        problem = output_problem(outcome)
        if problem:
            return problem
    elif not outcome.get("connected"):
        return "the result is not connected to the input (detached, .numpy(), torch.tensor(...) or no_grad)."
    if "grad_error" in outcome:
        return f"backpropagating through the result failed ({outcome['grad_error']})."
    got = outcome.get("grads")
    if got is None or len(got) != len(want):
        return "no gradient with respect to the student's inputs."
    for g, w in zip(got, want):
        if tuple(g.shape) != tuple(w.shape):
            return "the gradient has the wrong shape."
        scale = float(w.abs().max()) if w.numel() else 0.0
        err = float((g - w).abs().max()) if w.numel() else 0.0
        if not math.isfinite(err) or err > 1e-7 + 1e-3 * max(scale, 1e-12):
            return (f"the gradient with respect to the student's input is off by up to {err:.3g} (its size is "
                    f"{scale:.3g}): part of the computation is detached, or the loss itself is wrong.")
    return None
