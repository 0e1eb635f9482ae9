"""Exercise 2, the GKD loss: the public check ``check_gkd_loss`` with its cases and catalogues of named
mistakes, the hidden cases the grader scores, and the exercise's record (:data:`EXERCISE`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

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
from .kd_loss import kl_rows as _kl_rows
from .kd_loss import softened as _soft
from .outcome import close, fmt, loss_grads, loss_stable, loss_value, output_problem
from .record import CLASSROOM, Exercise, Mistake, Question

__all__ = ["check_gkd_loss", "GkdCase", "CASES", "BASE", "ALL_RIGHT", "TEMPERATURE", "DEFAULT_TEMPERATURE",
           "NONE_KEPT", "LARGE", "MISTAKES", "TEMPERATURE_MISTAKES", "make_inputs", "HIDDEN", "hidden_cases",
           "EXERCISE"]

CHECK = "check_gkd_loss"


@dataclass(frozen=True)
class GkdCase:
    label: str
    seed: int
    batch: int
    classes: int
    right: int  # samples on which the teacher's argmax equals the label
    temperature: Optional[float]  # None: called without the argument
    scale: float = 2.0  # size of the logits


BASE = GkdCase("a batch of 12 (7 classes) where the teacher is right on 5 samples, temperature=1", 26, 12, 7, 5, 1.0)
ALL_RIGHT = GkdCase("a batch of 8 where the teacher is right on every sample", 27, 8, 7, 8, 1.0)
TEMPERATURE = GkdCase("the same kind of batch with temperature=4", 15, 12, 7, 6, 4.0)
DEFAULT_TEMPERATURE = GkdCase("a batch of 10, called without a temperature", 28, 10, 5, 4, None)
NONE_KEPT = GkdCase("a batch of 8 where the teacher is wrong on EVERY sample", 29, 8, 6, 0, 1.0)
LARGE = GkdCase("logits of size about 100", 30, 10, 8, 5, 1.0, scale=60.0)
CASES: Tuple[GkdCase, ...] = (BASE, ALL_RIGHT, TEMPERATURE, DEFAULT_TEMPERATURE, NONE_KEPT, LARGE)


def make_inputs(case: GkdCase):
    """(student logits with grad, teacher logits, targets), the teacher right on exactly ``case.right`` samples."""
    g = generator(case.seed)
    n, c = case.batch, case.classes
    s = (torch.randn(n, c, generator=g) * case.scale).requires_grad_(True)
    t = torch.randn(n, c, generator=g) * case.scale
    pred = t.argmax(1)
    right = torch.zeros(n, dtype=torch.bool)
    right[torch.randperm(n, generator=g)[:case.right]] = True
    wrong_label = (pred + 1 + torch.randint(0, c - 1, (n,), generator=g)) % c
    return s, t, torch.where(right, pred, wrong_label)


def _call(fn, case: GkdCase, s, t, y) -> Call:
    return call(fn, s, t, y) if case.temperature is None else call(fn, s, t, y, temperature=case.temperature)


def _want(case: GkdCase, s, t, y) -> float:
    return value(losses.gkd_loss(s, t, y, temperature=case.temperature or 1.0))


# ---------------------------------------------------------------- the catalogues


def _kept(t, y):
    return (t.argmax(1) == y).to(t.dtype)


def _masked(rows, t, y, temperature=1.0, factor=None):
    """Rows averaged over the kept samples, times ``factor`` (default T^2)."""
    kept = _kept(t, y)
    factor = temperature ** 2 if factor is None else factor
    return (rows * kept).sum() / kept.sum().clamp_min(1) * factor


def _over(mask, rows, temperature):
    return (rows * mask).sum() / mask.sum().clamp_min(1) * temperature ** 2


_SQUARED = "used a squared error between the probabilities instead of the KL divergence."
# Matched on BASE (temperature 1): which samples, what average, which divergence.
MISTAKES: Tuple[Mistake, ...] = (
    Mistake("kept_teacher_wrong", "kept the samples where the teacher is WRONG: GKD keeps the samples whose teacher "
            "prediction (argmax of the teacher's logits) EQUALS the label.",
            lambda s, t, y, temperature=1.0: _over(1 - _kept(t, y), _kl_rows(s, t, temperature, temperature), temperature)),
    Mistake("kept_student_right", "chose the samples by the STUDENT's prediction: GKD keeps the samples where the "
            "TEACHER's argmax equals the label.",
            lambda s, t, y, temperature=1.0: _over(_kept(s, y), _kl_rows(s, t, temperature, temperature), temperature)),
    Mistake("batch_average", "averaged over the whole batch instead of the kept samples: divide the summed KL of the "
            "kept samples by the NUMBER OF KEPT samples, not by the batch size.",
            lambda s, t, y, temperature=1.0: (_kl_rows(s, t, temperature, temperature) * _kept(t, y)).mean() * temperature ** 2),
    Mistake("plain_kd", "kept every sample: that is plain KD. GKD keeps only the samples the teacher classifies "
            "correctly (teacher argmax == label).",
            lambda s, t, y, temperature=1.0: _kl_rows(s, t, temperature, temperature).mean() * temperature ** 2),
    Mistake("no_division", "summed the KL of the kept samples without dividing by their number: GKD AVERAGES over "
            "the kept samples.",
            lambda s, t, y, temperature=1.0: (_kl_rows(s, t, temperature, temperature) * _kept(t, y)).sum() * temperature ** 2),
    Mistake("class_average", "also averaged over the classes (F.kl_div(..., reduction='mean') does that): sum the KL "
            "over the classes, and average over the kept samples only.",
            lambda s, t, y, temperature=1.0: _masked(_kl_rows(s, t, temperature, temperature), t, y, temperature) / s.shape[1]),
    Mistake("reversed_kl", "computed KL(student || teacher): distillation uses KL(teacher || student) = "
            "sum_j p_teacher_j * (log p_teacher_j - log p_student_j).",
            lambda s, t, y, temperature=1.0: _masked(_kl_rows(t, s, temperature, temperature), t, y, temperature)),
    Mistake("probabilities_to_kl_div", "passed probabilities where F.kl_div expects LOG-probabilities as its first "
            "argument: use F.kl_div(F.log_softmax(student / T, 1), F.softmax(teacher / T, 1), reduction='sum') "
            "(or log_target=True).",
            lambda s, t, y, temperature=1.0: _masked(
                (_soft(t, temperature)[0] * (_soft(t, temperature)[1] - _soft(s, temperature)[0])).sum(1), t, y, temperature)),
    Mistake("soft_cross_entropy", "computed the cross-entropy with the teacher's soft labels instead of the KL "
            "divergence: the gradient is the same, but the value includes the teacher's entropy. Use "
            "KL(teacher || student).",
            lambda s, t, y, temperature=1.0: _masked(
                -(_soft(t, temperature)[0] * _soft(s, temperature)[1]).sum(1), t, y, temperature)),
    Mistake("squared_error_summed", _SQUARED, lambda s, t, y, temperature=1.0: _masked(
        (_soft(s, temperature)[0] - _soft(t, temperature)[0]).pow(2).sum(1), t, y, temperature)),
    Mistake("squared_error_averaged", _SQUARED, lambda s, t, y, temperature=1.0: _masked(
        (_soft(s, temperature)[0] - _soft(t, temperature)[0]).pow(2).mean(1), t, y, temperature)),
    Mistake("squared_error_logits", "used a squared error between the logits instead of the KL divergence of the "
            "softened probabilities.",
            lambda s, t, y, temperature=1.0: _masked((s - t).pow(2).mean(1), t, y, factor=1.0)),
)

_BOTH = "softened only the {which} logits: divide BOTH the student's and the teacher's logits by T."
# Matched on TEMPERATURE (T = 4), once the BASE case is right.
TEMPERATURE_MISTAKES: Tuple[Mistake, ...] = (
    Mistake("no_t_squared", "forgot the T^2 factor: multiply the KL by temperature**2 (Hinton et al.), so that the "
            "gradients keep their size whatever the temperature.",
            lambda s, t, y, temperature=1.0: _masked(_kl_rows(s, t, temperature, temperature), t, y, factor=1.0)),
    Mistake("t_not_t_squared", "multiplied by T instead of T^2: the factor is temperature**2.",
            lambda s, t, y, temperature=1.0: _masked(_kl_rows(s, t, temperature, temperature), t, y, factor=temperature)),
    Mistake("divided_by_t_squared", "divided by T^2 where KD multiplies by it: the factor is temperature**2, multiplied.",
            lambda s, t, y, temperature=1.0: _masked(_kl_rows(s, t, temperature, temperature), t, y,
                                                     factor=temperature ** -2)),
    Mistake("student_only_softened", _BOTH.format(which="student's"),
            lambda s, t, y, temperature=1.0: _masked(_kl_rows(s, t, temperature, 1.0), t, y, temperature)),
    Mistake("student_only_softened_no_t_squared", _BOTH.format(which="student's"),
            lambda s, t, y, temperature=1.0: _masked(_kl_rows(s, t, temperature, 1.0), t, y, factor=1.0)),
    Mistake("teacher_only_softened", _BOTH.format(which="teacher's"),
            lambda s, t, y, temperature=1.0: _masked(_kl_rows(s, t, 1.0, temperature), t, y, temperature)),
    Mistake("teacher_only_softened_no_t_squared", _BOTH.format(which="teacher's"),
            lambda s, t, y, temperature=1.0: _masked(_kl_rows(s, t, 1.0, temperature), t, y, factor=1.0)),
    Mistake("logits_not_softened", "applied the T^2 factor but did not divide the logits by T: soften both with "
            "softmax(logits / T).",
            lambda s, t, y, temperature=1.0: _masked(_kl_rows(s, t), t, y, temperature)),
    Mistake("temperature_ignored", "ignored the temperature argument: divide both logits by T, and multiply the KL "
            "by T^2.", lambda s, t, y, temperature=1.0: _masked(_kl_rows(s, t), t, y, factor=1.0)),
    Mistake("logits_multiplied", "multiplied the logits by T instead of dividing them: softmax(logits / T).",
            lambda s, t, y, temperature=1.0: _masked(_kl_rows(s, t, 1 / temperature, 1 / temperature), t, y, temperature)),
)


# ---------------------------------------------------------------- the check


def _double(*tensors):
    return [x.detach().double() if x.is_floating_point() else x for x in tensors]


def _crashed(case: GkdCase, result: Call) -> str:
    if isinstance(result.error, TypeError) and "temperature" in str(result.error):
        return (f"raised {result.shown()} on {case.label}. Your function must accept the keyword argument "
                "temperature= (default 1.0), as in the task.")
    return crash_report(result.error, case.label)


def _unexplained_base(fn) -> str:
    s, t, y = make_inputs(ALL_RIGHT)
    result = _call(fn, ALL_RIGHT, s, t, y)
    if result.is_scalar_tensor() and close(result.number(), value(losses.kd_loss(s, t, 1.0))):
        return ("right when the teacher is right on every sample, wrong otherwise: the divergence is fine, so check "
                "WHICH samples you keep (teacher argmax == label) and that you divide by their number.")
    return ("the value matches none of the usual mistakes: per sample, KL(softmax(teacher/T) || softmax(student/T)) "
            "summed over classes; keep the samples where the teacher's argmax equals the label; average over the "
            "kept samples; multiply by T^2.")


def _base(fn, name: str) -> Optional[str]:
    """The problem on BASE, or None; a crash or a wrong kind of output ends the check there."""
    s, t, y = make_inputs(BASE)
    before = snapshot([s, t, y])
    result = _call(fn, BASE, s, t, y)
    if not result.ok or result.output_problem("batch"):
        fail(CHECK, name, [_crashed(BASE, result) if not result.ok else result.output_problem("batch")])
    got, want = result.number(), _want(BASE, s, t, y)
    where = f"(on {BASE.label}: you return {fmt(got)}, cdlib.losses.gkd_loss gives {fmt(want)})"
    if not math.isfinite(got):
        return (f"returned {fmt(got)} on {BASE.label} (cdlib.losses.gkd_loss gives {fmt(want)}). Use F.log_softmax "
                "for the log-probabilities; if you call F.kl_div with log-probabilities as the target, pass "
                "log_target=True.")
    if not close(got, want):
        mistake = match(got, MISTAKES, _double(s, t, y) + [1.0])
        return f"{mistake.diagnosis if mistake else _unexplained_base(fn)}\n{where}"
    if not grads_close(grad_of(result.value, [s]), grad_of(losses.gkd_loss(s, t, y), [s])):
        return (f"the value is right but the gradient with respect to the student's logits is not (on {BASE.label}): "
                "did you detach part of the computation?")
    if modified(before, [s, t, y]):
        return "modified its inputs in place: a loss must leave the logits and targets unchanged."
    return None


def _temperature(fn) -> List[str]:
    problems = []
    s, t, y = make_inputs(TEMPERATURE)
    result = _call(fn, TEMPERATURE, s, t, y)
    if not result.ok or result.output_problem("batch"):
        problems.append(_crashed(TEMPERATURE, result) if not result.ok else result.output_problem("batch"))
    elif not close(result.number(), _want(TEMPERATURE, s, t, y)):
        got, want = result.number(), _want(TEMPERATURE, s, t, y)
        mistake = match(got, TEMPERATURE_MISTAKES, _double(s, t, y) + [TEMPERATURE.temperature])
        diagnosis = mistake.diagnosis if mistake else ("right at temperature 1 but wrong at temperature 4: divide both "
                                                       "logits by T before the softmax, and multiply the KL by T^2.")
        problems.append(f"{diagnosis}\n(on {TEMPERATURE.label}: you return {fmt(got)}, cdlib.losses.gkd_loss gives "
                        f"{fmt(want)})")
    s, t, y = make_inputs(DEFAULT_TEMPERATURE)
    result = _call(fn, DEFAULT_TEMPERATURE, s, t, y)
    if not result.ok:
        problems.append(f"raised {result.shown()} when called without a temperature: give it a default, "
                        "temperature=1.0 (the reference code's GKD uses T = 1).")
    elif result.is_scalar_tensor() and not close(result.number(), _want(DEFAULT_TEMPERATURE, s, t, y)):
        got = result.number()
        default = next((T for T in (2.0, 3.0, 4.0, 5.0, 10.0, 20.0)
                        if close(got, value(losses.gkd_loss(s, t, y, temperature=T)))), None)
        found = f"your default temperature is {default:g}" if default else "your default temperature is not 1"
        problems.append(f"{found}: GKD uses temperature=1.0 by default (the reference code's T = 1).")
    return problems


def _none_kept(fn, base_ok: bool) -> Optional[str]:
    """The reference code's division by zero: a batch where the teacher is wrong on every sample."""
    s, t, y = make_inputs(NONE_KEPT)
    result = _call(fn, NONE_KEPT, s, t, y)
    guard = "Return 0 for such a batch: divide by kept.sum().clamp_min(1)."
    if not result.ok:
        return (f"crashed when no sample is kept ({result.shown()}), on {NONE_KEPT.label}. Such batches happen: "
                "GKD must return 0 for them, e.g. divide by kept.sum().clamp_min(1).")
    if not isinstance(result.value, torch.Tensor):
        return (f"returned a Python {type(result.value).__name__} ({result.value!r}) when no sample is kept: return a "
                "tensor (e.g. compute the masked sum and divide by kept.sum().clamp_min(1)); the trainer calls "
                ".detach() on every loss term.")
    if result.value.numel() != 1:
        return None
    got = result.number()
    if math.isnan(got):
        return ("NaN when no sample is kept (the teacher is wrong on every sample of the batch): you divide by the "
                "number of kept samples, which is 0, and 0/0 = NaN; the NaN reaches the gradients even when the GKD "
                "weight is 0. " + guard)
    if math.isinf(got):
        return "infinite loss when no sample is kept: you divide by the number of kept samples, which is 0. " + guard
    if abs(got) > 1e-7:
        return (f"returned {fmt(got)} when no sample is kept: with nothing to distil, GKD is 0 (only the samples "
                "the teacher gets right take part).") if base_ok else None
    if result.value.requires_grad or result.value.grad_fn is not None:
        grad = grad_of(result.value, [s])
        if grad is None or not torch.isfinite(grad[0]).all():
            return ("the value is 0 when no sample is kept, but its gradient is NaN: torch.where (or masking) after a "
                    "division by zero still back-propagates the NaN. Avoid the division by zero itself: divide by "
                    "kept.sum().clamp_min(1).")
    return None


def _large(fn) -> Optional[str]:
    """log(softmax(.)) underflows on large logits."""
    s, t, y = make_inputs(LARGE)
    result = _call(fn, LARGE, s, t, y)
    want = _want(LARGE, s, t, y)
    if not result.is_scalar_tensor():
        return f"failed on {LARGE.label} ({result.shown()})."
    got = result.number()
    grad = grad_of(result.value, [s])
    if not math.isfinite(got) or grad is None or not torch.isfinite(grad[0]).all():
        return (f"numerically unstable: on {LARGE.label} your function returns {fmt(got)} (or a NaN gradient); "
                f"cdlib.losses.gkd_loss gives {fmt(want)}. torch.log(F.softmax(x)) underflows to log(0) = -inf: "
                "use F.log_softmax(x, dim=1).")
    if not close(got, want, rtol=1e-3, atol=1e-4):
        return (f"inaccurate on {LARGE.label}: you return {fmt(got)}, cdlib.losses.gkd_loss gives {fmt(want)}. "
                "Use F.log_softmax rather than log(softmax).")
    return None


def check_gkd_loss(fn: Callable, verbose: bool = True) -> None:
    """Check ``fn(student_logits, teacher_logits, targets, temperature=1.0)`` against :func:`cdlib.losses.gkd_loss`.

    Raises :class:`CheckFailed` naming the mistake (wrong samples kept, wrong
    average, a missing T^2, NaN on a batch where the teacher is always wrong ...).
    """
    name = function_name(fn)
    run_check(CHECK, name, lambda: _check(fn, name, verbose))


def _check(fn: Callable, name: str, verbose: bool) -> None:
    base_problem = _base(fn, name)
    problems = [base_problem] if base_problem else []
    base_ok = base_problem is None
    if base_ok:
        problems += _temperature(fn)
    problems += [p for p in [_none_kept(fn, base_ok), _large(fn) if base_ok else None] if p]
    if problems:
        fail(CHECK, name, problems)
    if verbose:
        print(f"✓ {CHECK} passed: {name} matches cdlib.losses.gkd_loss, all-wrong batch included.")


# ---------------------------------------------------------------- grading: hidden cases and questions

# Not the public check's cases: other batch sizes and class counts, temperatures 0.5 and 2.5 (the check uses 1
# and 4), a batch of one, and larger logits.
HIDDEN: Dict[str, GkdCase] = {
    "gkd-1": GkdCase("batch 9, 4 classes, teacher right on 4, default temperature", 201, 9, 4, 4, None),
    "gkd-2": GkdCase("batch 33, 13 classes, teacher right on 20, temperature=1.0", 202, 33, 13, 20, 1.0),
    "gkd-3": GkdCase("a batch of 1 the teacher gets right, 6 classes", 203, 1, 6, 1, 1.0),
    "gkd-4": GkdCase("batch 10, 5 classes, teacher right on 7, temperature=2.5", 204, 10, 5, 7, 2.5),
    "gkd-5": GkdCase("batch 6, 9 classes, teacher right on 2, temperature=0.5", 205, 6, 9, 2, 0.5),
    "gkd-6": GkdCase("batch 5, 8 classes, teacher wrong on every sample", 206, 5, 8, 0, 1.0),
    "gkd-7": GkdCase("batch 8, 10 classes, logits of size about 200", 207, 8, 10, 5, 1.0, scale=120.0),
}


def hidden_cases() -> List[dict]:
    """The grader's cases: inputs, and the right value and gradient (cdlib.losses.gkd_loss in float64)."""
    out = []
    for case_id, case in HIDDEN.items():
        s, t, y = make_inputs(case)
        kwargs = {} if case.temperature is None else {"temperature": case.temperature}
        want, grads = references.answer(losses.gkd_loss, [s, t, y], kwargs)
        out.append({"id": case_id, "label": case.label, "args": [s.detach(), t, y], "kwargs": kwargs, "grad": [0],
                    "want": float(want), "want_grads": grads})
    return out


def _all_wrong(case: dict, outcome: dict, _all=None) -> Optional[str]:
    problem = output_problem(outcome, need_graph=False)
    if problem:
        return problem
    if outcome["value"] != 0.0:
        return f"returned {outcome['value']:.6g}; with no sample kept GKD is exactly 0 (the reference code's 0/0 = NaN)."
    for g in outcome.get("grads", []):
        if not bool(torch.isfinite(g).all()):
            return "the value is 0 but its gradient is NaN: avoid the division by zero itself (clamp_min(1))."
    return None


EXERCISE = Exercise(
    name="exercise2_gkd_loss",
    function="my_gkd_loss",
    signature="my_gkd_loss(student_logits, teacher_logits, targets, temperature=1.0) -> 0-d tensor",
    check=check_gkd_loss,
    cases=CASES,
    mistakes={"temperature 1": MISTAKES, "temperature 4": TEMPERATURE_MISTAKES},
    questions=(
        Question("value_t1", 3, "the GKD loss at temperature 1 (the default), a batch of 1 included",
                 ("gkd-1", "gkd-2", "gkd-3"), loss_value),
        Question("temperature", 2, "the GKD loss at other temperatures (T^2 factor, softened distributions)",
                 ("gkd-4", "gkd-5"), loss_value),
        Question("all_wrong", 2, "exactly 0, with finite gradients, when the teacher is wrong on every sample",
                 ("gkd-6",), _all_wrong),
        Question("gradient", 2, "the gradient with respect to the student's logits",
                 ("gkd-1", "gkd-2", "gkd-4"), loss_grads),
        Question("stability", 1, "accurate and finite for very large logits", ("gkd-7",), loss_stable),
    ),
    hidden_cases=hidden_cases,
    forbidden_modules=("cdlib.losses", "cdlib_bench.steps", CLASSROOM),
)
