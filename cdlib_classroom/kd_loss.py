"""Exercise 4, the KD loss with a temperature: the public check ``check_kd_loss`` with its cases and
catalogue of named mistakes, the hidden cases the grader scores, and the exercise's record (:data:`EXERCISE`).
Its softened KL divergence (:func:`kl_rows`) also builds exercise 2's wrong GKD losses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from cdlib import losses

from . import references
from .checking import (
    Call,
    call,
    crash_report,
    fail,
    function_name,
    generator,
    grad_of,
    grads_close,
    match,
    modified,
    run_check,
    snapshot,
    value,
)
from .outcome import close, fmt, loss_grads, loss_stable, loss_value
from .record import CLASSROOM, Exercise, Mistake, Question

__all__ = ["check_kd_loss", "KdCase", "BASE", "CASES", "LARGE", "MISTAKES", "make_inputs", "kl_rows", "softened",
           "HIDDEN", "hidden_cases", "EXERCISE"]

CHECK = "check_kd_loss"


@dataclass(frozen=True)
class KdCase:
    label: str
    seed: int
    batch: int
    classes: int
    temperature: float
    scale: float = 2.0  # size of the logits


# Mistakes are diagnosed on BASE: at T = 4 a missing T^2, T instead of T^2 and a missing temperature all differ,
# where at T = 1 they would agree with the right answer.
BASE = KdCase("a batch of 12 logits over 7 classes, T=4", 41, 12, 7, 4.0)
CASES: Tuple[KdCase, ...] = (
    BASE,
    KdCase("a batch of 9 over 5 classes, T=1", 42, 9, 5, 1.0),
    KdCase("a batch of 1 sample over 10 classes, T=2", 43, 1, 10, 2.0),
    KdCase("a batch of 16 over 100 classes, T=2.5 (a fractional temperature)", 44, 16, 100, 2.5),
)
LARGE = KdCase("logits of size about 100, T=1", 45, 10, 8, 1.0, scale=60.0)


def make_inputs(case: KdCase):
    """(student logits with grad, teacher logits), the same on every call."""
    g = generator(case.seed)
    s = (torch.randn(case.batch, case.classes, generator=g) * case.scale).requires_grad_(True)
    t = torch.randn(case.batch, case.classes, generator=g) * case.scale * 1.5
    return s, t


# ---------------------------------------------------------------- the catalogue


def kl_rows(s, t, ts: float = 1.0, tt: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/tt) || softmax(s/ts)) per row: the student's logits softened by ``ts``, the teacher's by ``tt``
    (a wrong answer may soften only one side)."""
    log_ps, log_pt = F.log_softmax(s / ts, dim=1), F.log_softmax(t / tt, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(1)


def _kd(rows: Callable, factor: Callable = lambda T: T ** 2, reduce: Callable = torch.mean) -> Callable:
    """A wrong KD loss: ``rows(s, t, T)`` per sample, reduced over the batch, times ``factor(T)``."""
    return lambda s, t, T: reduce(rows(s, t, T)) * factor(T)


def softened(x, T):
    """(softmax(x / T), log_softmax(x / T)) over the classes."""
    return F.softmax(x / T, 1), F.log_softmax(x / T, 1)


_KL = lambda s, t, T: kl_rows(s, t, T, T)  # noqa: E731 - the right per-sample divergence
_ONE_SIDE = "softened only the {which} logits: divide BOTH the student's and the teacher's logits by T before the softmax."

MISTAKES: Tuple[Mistake, ...] = (
    Mistake("no_t_squared", "forgot the T^2 factor: multiply the KL by T**2 (Hinton et al. 2015, section 2), so "
            "that the gradients keep their size whatever the temperature.", _kd(_KL, factor=lambda T: 1.0)),
    Mistake("t_not_t_squared", "multiplied by T instead of T^2: the factor is T**2.", _kd(_KL, factor=lambda T: T)),
    Mistake("divided_by_t_squared", "divided by T^2 where KD multiplies by it: the factor is T**2, multiplied.",
            _kd(_KL, factor=lambda T: T ** -2)),
    Mistake("reversed_kl", "computed KL(student || teacher): distillation uses KL(teacher || student) = "
            "sum_j p_teacher_j * (log p_teacher_j - log p_student_j). (With F.kl_div the FIRST argument is the "
            "student's log-probabilities, the second the teacher's probabilities.)",
            _kd(lambda s, t, T: kl_rows(t, s, T, T))),
    Mistake("batch_sum", "summed over the batch where KD averages: divide by the batch size (F.kl_div(..., "
            "reduction='batchmean'), not reduction='sum').", _kd(_KL, reduce=torch.sum)),
    Mistake("class_mean", "also averaged over the classes (F.kl_div(..., reduction='mean') does that): sum the KL "
            "over the classes and average over the samples only (reduction='batchmean').",
            lambda s, t, T: _KL(s, t, T).mean() / s.shape[1] * T ** 2),
    Mistake("student_not_softened", _ONE_SIDE.format(which="teacher's"),
            _kd(lambda s, t, T: kl_rows(s, t, 1.0, T))),
    Mistake("teacher_not_softened", _ONE_SIDE.format(which="student's"),
            _kd(lambda s, t, T: kl_rows(s, t, T, 1.0))),
    Mistake("student_not_softened_no_t_squared", _ONE_SIDE.format(which="teacher's") + " Then multiply by T**2.",
            _kd(lambda s, t, T: kl_rows(s, t, 1.0, T), factor=lambda T: 1.0)),
    Mistake("teacher_not_softened_no_t_squared", _ONE_SIDE.format(which="student's") + " Then multiply by T**2.",
            _kd(lambda s, t, T: kl_rows(s, t, T, 1.0), factor=lambda T: 1.0)),
    Mistake("no_temperature", "ignored the temperature: divide both logits by T before the softmax, and multiply "
            "the KL by T**2.", _kd(lambda s, t, T: kl_rows(s, t, 1.0, 1.0), factor=lambda T: 1.0)),
    Mistake("logits_not_softened", "applied the T^2 factor but did not divide the logits by T: soften both with "
            "softmax(logits / T).", _kd(lambda s, t, T: kl_rows(s, t, 1.0, 1.0))),
    Mistake("logits_multiplied", "multiplied the logits by T instead of dividing them: softmax(logits / T).",
            _kd(lambda s, t, T: kl_rows(s, t, 1 / T, 1 / T))),
    Mistake("probabilities_to_kl_div", "passed the student's PROBABILITIES where F.kl_div expects "
            "LOG-probabilities as its first argument: F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), "
            "reduction='batchmean') * T**2.",
            _kd(lambda s, t, T: (softened(t, T)[0] * (softened(t, T)[1] - softened(s, T)[0])).sum(1))),
    Mistake("teacher_log_probabilities_as_weights", "weighted the log-ratio by the teacher's LOG-probabilities: "
            "KL(p_T || p_S) = sum_j p_T_j * (log p_T_j - log p_S_j), with the teacher's probabilities p_T_j = "
            "exp(log p_T_j) in front (a softmax/log_softmax mix-up).",
            _kd(lambda s, t, T: (softened(t, T)[1] * (softened(t, T)[1] - softened(s, T)[1])).sum(1))),
    Mistake("soft_cross_entropy", "computed the cross-entropy with the teacher's soft labels instead of the KL "
            "divergence: the gradient is the same, but the value includes the teacher's entropy. Use "
            "KL(teacher || student).", _kd(lambda s, t, T: -(softened(t, T)[0] * softened(s, T)[1]).sum(1))),
    Mistake("squared_error", "used a squared error between the softened probabilities instead of the KL divergence.",
            _kd(lambda s, t, T: (softened(s, T)[0] - softened(t, T)[0]).pow(2).sum(1))),
)


# ---------------------------------------------------------------- the check


@dataclass
class _Outcome:
    case: KdCase
    s: torch.Tensor
    t: torch.Tensor
    result: Call
    want: float
    problem: Optional[str]  # None: right; else "crash", "output", "value", "gradient", "in_place"


def _run(fn, case: KdCase) -> _Outcome:
    s, t = make_inputs(case)
    before = snapshot([s, t])
    result = call(fn, s, t, case.temperature)
    reference = losses.kd_loss(s, t, case.temperature)
    outcome = _Outcome(case, s, t, result, value(reference), None)
    if not result.ok:
        outcome.problem = "crash"
    elif result.output_problem("batch"):
        outcome.problem = "output"
    elif not close(result.number(), outcome.want, rtol=1e-3 if case.scale > 2 else 1e-4, atol=1e-5):
        outcome.problem = "value"
    elif not grads_close(grad_of(result.value, [s]), grad_of(reference, [s])):
        outcome.problem = "gradient"
    elif modified(before, [s, t]):
        outcome.problem = "in_place"
    return outcome


def _crashed(bad: _Outcome) -> str:
    if isinstance(bad.result.error, TypeError) and "argument" in str(bad.result.error):
        return (f"raised {bad.result.shown()} on {bad.case.label}. The check calls your function as "
                "fn(student_logits, teacher_logits, T), with the temperature as its third argument.")
    return crash_report(bad.result.error, bad.case.label)


def _wrong_value(bad: _Outcome, passed: List[_Outcome]) -> str:
    got, case = bad.result.number(), bad.case
    where = f"(on {case.label}: you return {fmt(got)}, cdlib.losses.kd_loss gives {fmt(bad.want)})"
    if math.isnan(got):
        return ("returned NaN. If you called F.kl_div with the teacher's LOG-probabilities as its target, pass "
                f"log_target=True (or give it probabilities); use F.log_softmax, not torch.log(F.softmax(...)).\n{where}")
    if not math.isfinite(got):
        return f"returned {fmt(got)}: use F.log_softmax for the log-probabilities.\n{where}"
    inputs = [bad.s.detach().double(), bad.t.double(), case.temperature]
    mistake = match(got, MISTAKES, inputs)
    if mistake is not None:
        return f"{mistake.diagnosis}\n{where}"
    if case.batch == 1 and passed:
        return f"right on batches of several samples but wrong for a batch of one sample.\n{where}"
    others = sorted({o.case.temperature for o in passed})
    if others:
        return (f"right at T={', '.join(f'{T:g}' for T in others)} but wrong at T={case.temperature:g}: divide both "
                f"logits by T before the softmax, and multiply the KL by T**2.\n{where}")
    return ("the value matches none of the usual mistakes: per sample, KL(softmax(teacher/T) || softmax(student/T)) "
            f"summed over the classes; average over the batch; multiply by T**2.\n{where}")


def _problem(bad: _Outcome, passed: List[_Outcome]) -> str:
    if bad.problem == "crash":
        return _crashed(bad)
    if bad.problem == "output":
        return bad.result.output_problem("batch")
    if bad.problem == "value":
        return _wrong_value(bad, passed)
    if bad.problem == "gradient":
        return (f"the value is right but the gradient with respect to the student's logits is not (on "
                f"{bad.case.label}): did you detach part of the computation?")
    return "modified its inputs in place: a loss must leave the logits unchanged."


def _large(fn) -> Optional[str]:
    """log(softmax(.)) underflows on large logits."""
    outcome = _run(fn, LARGE)
    if outcome.problem is None:
        return None
    got = outcome.result.number() if outcome.result.is_scalar_tensor() else math.nan
    if outcome.problem in ("crash", "output"):
        return f"failed on {LARGE.label} ({outcome.result.shown()})."
    if not math.isfinite(got) or outcome.problem == "gradient":
        return (f"numerically unstable: on {LARGE.label} your function returns {fmt(got)} (or a NaN gradient); "
                f"cdlib.losses.kd_loss gives {fmt(outcome.want)}. torch.log(F.softmax(x)) underflows to log(0) = "
                "-inf: use F.log_softmax(x, dim=1).")
    return (f"inaccurate on {LARGE.label}: you return {fmt(got)}, cdlib.losses.kd_loss gives {fmt(outcome.want)}. "
            "Use F.log_softmax rather than log(softmax), in float32 or higher.")


def check_kd_loss(fn: Callable, verbose: bool = True) -> None:
    """Check ``fn(student_logits, teacher_logits, T) -> loss`` against :func:`cdlib.losses.kd_loss`.

    The loss is T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the
    batch. Raises :class:`CheckFailed` naming the mistake (a missing T^2, the KL
    reversed, a sum over the batch, one side not softened ...).
    """
    name = function_name(fn)
    run_check(CHECK, name, lambda: _check(fn, name, verbose))


def _check(fn: Callable, name: str, verbose: bool) -> None:
    outcomes = [_run(fn, case) for case in CASES]
    passed = [o for o in outcomes if o.problem is None]
    bad = next((o for o in outcomes if o.problem is not None), None)
    if bad is not None:
        fail(CHECK, name, [_problem(bad, passed)])
    problem = _large(fn)
    if problem:
        fail(CHECK, name, [problem])
    if verbose:
        print(f"✓ {CHECK} passed: {name} matches cdlib.losses.kd_loss on {len(CASES) + 1} test cases.")


# ---------------------------------------------------------------- grading: hidden cases and questions

# Not the public check's temperatures but 1 (it uses 1, 2, 2.5 and 4): 0.5, 1.5, 3 and 7; other batch sizes and
# class counts, a batch of one, larger logits.
HIDDEN: Dict[str, KdCase] = {
    "kd-1": KdCase("batch 6, 11 classes, T=1", 401, 6, 11, 1.0),
    "kd-2": KdCase("batch 21, 3 classes, T=3", 402, 21, 3, 3.0),
    "kd-3": KdCase("a batch of 1, 40 classes, T=7", 403, 1, 40, 7.0),
    "kd-4": KdCase("batch 5, 6 classes, T=0.5", 404, 5, 6, 0.5),
    "kd-5": KdCase("batch 8, 12 classes, logits of size about 200, T=1.5", 405, 8, 12, 1.5, scale=120.0),
}


def hidden_cases() -> List[dict]:
    """The grader's cases: inputs, and the right value and gradient (cdlib.losses.kd_loss in float64)."""
    out = []
    for case_id, case in HIDDEN.items():
        s, t = make_inputs(case)
        want, grads = references.answer(losses.kd_loss, [s, t, case.temperature])
        out.append({"id": case_id, "label": case.label, "args": [s.detach(), t, case.temperature], "grad": [0],
                    "want": float(want), "want_grads": grads})
    return out


EXERCISE = Exercise(
    name="exercise4_kd_loss",
    function="my_kd_loss",
    signature="my_kd_loss(student_logits, teacher_logits, T) -> 0-d tensor",
    check=check_kd_loss,
    cases=CASES + (LARGE,),
    mistakes={"value at T=4": MISTAKES},
    questions=(
        Question("value_t1", 2, "the KD loss at T=1", ("kd-1",), loss_value),
        Question("temperature", 3, "the KD loss at T = 3, 7 and 0.5 (softened distributions, the T^2 factor)",
                 ("kd-2", "kd-3", "kd-4"), loss_value),
        Question("gradient", 3, "the gradient with respect to the student's logits, at several temperatures",
                 ("kd-1", "kd-2", "kd-4"), loss_grads),
        Question("stability", 2, "accurate and finite for very large logits", ("kd-5",), loss_stable),
    ),
    hidden_cases=hidden_cases,
    forbidden_modules=("cdlib.losses", "cdlib_bench.steps", CLASSROOM),
)
