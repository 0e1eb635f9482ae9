"""Exercise 3, an EDT schedule ``my_weights(epoch, epochs)``: the rules a schedule must follow, the public
check ``check_schedule`` that applies them to one run length, the hidden cases the grader applies them to
(other run lengths), ``schedule_fingerprint``, and the exercise's record (:data:`EXERCISE`).

A schedule has no single right answer, so it is judged by the rules the task states, written once here: it
answers ``{"ce", "cd", "gkd"}`` with finite, non-negative numbers at whole and fractional epochs; the CD
weight is 6 at epoch 1, never increases, and has decayed by the last epoch; the cross-entropy weight is
positive at the end. The public check tries one run length (the notebook's ``EPOCHS``, 30) at quarter
epochs; the hidden cases try runs of 7, 45 and 200 epochs at thirds, halves and whole epochs, so a schedule
with milestones hard-coded for one length fails.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from cdlib import terms

from .checking import fail, function_name, run_check, student_line
from .outcome import close, describe_result, error_text, fmt, raised_problem
from .record import CLASSROOM, AllAnswers, Exercise, Question

__all__ = ["check_schedule", "check_my_weights", "schedule_fingerprint", "epoch_grid", "answer_problem",
           "start_problem", "rise_problem", "never_decays_problem", "labels_problem", "PAPER_CD_START",
           "PAPER_MILESTONES", "NOTEBOOK_EPOCHS", "RUN_LENGTHS", "hidden_cases", "EXERCISE"]

CHECK = "check_schedule"
PAPER_CD_START = 6.0
# The reference code's EDT milestones (paper.md), to recognise a schedule hard-coded for them.
PAPER_MILESTONES = {60: "the CIFAR-100 recipe's first milestone (of 200 epochs)",
                    160: "the CIFAR-100 recipe's second milestone (of 200 epochs)",
                    30: "the ImageNet recipe's first milestone (of 100 epochs)",
                    90: "the ImageNet recipe's third milestone (of 100 epochs)"}
NOTEBOOK_EPOCHS = 30  # the run length the notebook checks (its EPOCHS)
RUN_LENGTHS = (7, 45, 200)  # the run lengths the grader tries
Weights = Dict[str, float]
Table = List[Tuple[float, Weights]]  # (epoch, weights) over one run, in epoch order


def epoch_grid(epochs: int, per_epoch: int = 4) -> List[float]:
    """Whole and fractional epochs the trainer may ask for: 1, 1.25, ..., epochs + 0.75."""
    return [e + k / per_epoch for e in range(1, epochs + 1) for k in range(per_epoch)]


# ---------------------------------------------------------------- the rules


def answer_problem(answer: dict, epoch: float) -> Optional[str]:
    """What breaks the rules in one answer, described by :func:`cdlib_classroom.outcome.describe_result`:
    a dict of exactly the three weights, finite numbers >= 0. None when it keeps them."""
    if "error" in answer:
        return raised_problem(answer)
    weights = answer.get("mapping")
    if weights is None:
        return (f"schedule({epoch:g}) returned a {answer['type']}; it must return a dict "
                "{'ce': ..., 'cd': ..., 'gkd': ...} of loss weights.")
    not_number = next((k for k, v in weights.items() if v is None), None)
    if not_number is not None:
        return f"the weight {not_number!r} at epoch {epoch:g} is {answer['mapping_repr'][not_number]}, not a number."
    missing = [k for k in terms.SCHEDULED if k not in weights]
    unknown = [k for k in weights if k not in terms.SCHEDULED]
    names = ", ".join(repr(k) for k in terms.SCHEDULED)
    if unknown:
        return (f"unknown key(s) {', '.join(map(repr, unknown))} at epoch {epoch:g}: the trainer reads only {names} "
                "(lower case) and silently ignores anything else — a misspelt key is a weight that never applies.")
    if missing:
        return (f"no {', '.join(map(repr, missing))} weight at epoch {epoch:g}: return all of {names} "
                "(a missing one would silently keep the recipe's fixed weight).")
    bad = next(((k, v) for k, v in weights.items() if not math.isfinite(v)), None)
    if bad:
        return f"the {bad[0]!r} weight is {bad[1]} at epoch {epoch:g}: every weight must be a finite number."
    negative = next(((k, v) for k, v in weights.items() if v < 0), None)
    if negative:
        return (f"the {negative[0]!r} weight is negative ({fmt(negative[1])}) at epoch {epoch:g}: a negative weight "
                "rewards the student for making that loss LARGER. Weights must be >= 0.")
    return None


def start_problem(table: Table) -> Optional[str]:
    """The CD weight must be the paper's 6 at epoch 1."""
    start = table[0][1]["cd"]
    if close(start, PAPER_CD_START, rtol=1e-6, atol=1e-9):
        return None
    return f"the CD weight starts at {fmt(start)} at epoch 1; the paper starts at lambda_CD = 6."


def rise_problem(table: Table) -> Optional[str]:
    """The CD weight must never increase."""
    cd = [(e, w["cd"]) for e, w in table]
    rise = next(((a, b) for a, b in zip(cd, cd[1:]) if b[1] > a[1] * (1 + 1e-9) + 1e-12), None)
    if rise is None:
        return None
    (e1, v1), (e2, v2) = rise
    return (f"the CD weight increases, from {fmt(v1)} at epoch {e1:g} to {fmt(v2)} at epoch {e2:g}: EDT only ever "
            "DECAYS the teacher's weight (it may stay flat for a while).")


def never_decays_problem(table: Table, epochs: int) -> Optional[str]:
    """The CD weight must have decayed by the last epoch."""
    start, last = table[0][1]["cd"], table[-1][1]["cd"]
    if last < start * (1 - 1e-6):
        return None
    return (f"the CD weight never decays: it is still {fmt(last)} at the last epoch ({epochs}). That is the constant "
            "schedule, not EDT.")


def labels_problem(table: Table) -> Optional[str]:
    """The cross-entropy weight must be positive at the end of the run."""
    epoch, weights = table[-1]
    if weights["ce"] > 0:
        return None
    return (f"the cross-entropy weight is {fmt(weights['ce'])} at the last epoch ({epoch:g}): the student would not "
            "learn from the labels at the end. EDT turns the labels ON (the paper's warm-up only switches them off "
            "at the start).")


# ---------------------------------------------------------------- the public check


def _signature_problem(schedule) -> Optional[str]:
    """Why ``schedule(epoch)`` cannot be called with one argument, or None (or when unknown)."""
    try:
        signature = inspect.signature(schedule)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(1.0)
    except TypeError as exc:
        return (f"the check calls schedule(epoch) with one argument, the epoch (a float), as the trainer does; your "
                f"schedule's signature is {signature} ({exc}). Give it one argument, e.g. "
                "lambda epoch: my_weights(epoch, EPOCHS), or register it and check "
                "schedules.get(name, epochs=EPOCHS).")
    return None


def _crash(exc: Exception, epoch: float, epochs: int) -> str:
    if epoch != int(epoch):
        return (f"crashed at the fractional epoch {epoch:g} ({error_text(exc)}), after answering for epoch "
                f"{math.floor(epoch)}: the trainer asks for the weights at every step, with epoch + step / "
                "steps_per_epoch (e.g. 1.25). Use math.floor(epoch) if your schedule only changes at whole epochs.")
    if isinstance(exc, (TypeError, IndexError, KeyError)):
        return (f"crashed at epoch {epoch:g} ({error_text(exc)}): the trainer calls schedule(epoch) with a FLOAT, "
                f"epoch + step / steps_per_epoch (1.0, 1.25, ...), counting epochs from 1 to {epochs}. "
                "Use math.floor(epoch) or int(epoch) where you need a whole number (e.g. as a list index).")
    return (f"raised {error_text(exc)} at epoch {epoch:g}{student_line(exc)}. That is an error in the code, not a rule of EDT: fix the "
            "error first, then run the check again.")


def _table(schedule, epochs: int) -> Tuple[Table, Optional[str]]:
    """The schedule's weights on the epoch grid, or the first problem met."""
    table: Table = []
    for epoch in epoch_grid(epochs):
        try:
            out = schedule(epoch)
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error is reported to the student
            return table, _crash(exc, epoch, epochs)
        answer = describe_result(out)
        problem = answer_problem(answer, epoch)
        if problem:
            return table, problem
        table.append((epoch, answer["mapping"]))
    return table, None


def _cd(schedule, epoch: float) -> Optional[float]:
    try:
        return float(schedule(epoch)["cd"])
    except Exception:  # noqa: BLE001 - only a hint depends on it
        return None


def _start_problem(schedule, table: Table) -> Optional[str]:
    problem = start_problem(table)
    if problem is None:
        return None
    at_zero = _cd(schedule, 0)
    if at_zero is not None and close(at_zero, PAPER_CD_START, 1e-6, 1e-9):
        problem += (" Your schedule gives 6 at epoch 0: did you count epochs from 0? The trainer counts from 1 (the "
                    "first epoch is epoch=1).")
    return problem


def _late_decay(schedule, epochs: int, start: float) -> str:
    """For a CD weight flat over the run: when it does decay, if it does within 10x the run (a hint), else ''."""
    first = next((e for e in range(epochs + 1, 10 * epochs + 1)
                  if (cd := _cd(schedule, float(e))) is not None and cd < start * (1 - 1e-6)), None)
    if first is None:
        return ""
    hint = (f" It does decay later: it is first below {fmt(start)} at epoch {first}, after the run's last epoch "
            f"({epochs}). Are its milestones fixed numbers? Derive them from the `epochs` argument.")
    milestone = PAPER_MILESTONES.get(first)
    return hint + (f" (Epoch {first} is {milestone}.)" if milestone else "")


def _decay_problems(schedule, table: Table, epochs: int) -> List[str]:
    problems = [p for p in [_start_problem(schedule, table)] if p]
    rise, never = rise_problem(table), never_decays_problem(table, epochs)
    if rise:
        problems.append(rise)
    elif never and not problems:
        problems.append(never + _late_decay(schedule, epochs, table[0][1]["cd"]))
    return problems + [p for p in [labels_problem(table)] if p]


def check_schedule(schedule: Callable[[float], Mapping[str, float]], epochs: int, verbose: bool = True) -> None:
    """Check that ``schedule(epoch) -> {"ce", "cd", "gkd"}`` is a valid EDT schedule for ``epochs`` epochs.

    Valid means: it answers for every whole and fractional epoch the trainer asks
    for (1-indexed, ``epoch + step / steps_per_epoch``) with exactly the three
    weights, all finite and non-negative; the CD weight starts at the paper's 6,
    never increases and has decayed by the last epoch; the cross-entropy weight is
    positive at the end. Raises :class:`CheckFailed` naming the first violation.
    """
    name = function_name(schedule, "your schedule")
    run_check(CHECK, name, lambda: _check(schedule, epochs, name, verbose))


def _check(schedule, epochs, name: str, verbose: bool) -> None:
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 2:
        raise ValueError(f"check_schedule needs a whole number of epochs >= 2 to see a decay, got {epochs!r}.")
    epochs = int(epochs)
    signature = _signature_problem(schedule)
    if signature:
        fail(CHECK, name, [signature])
    table, problem = _table(schedule, epochs)
    problems = [problem] if problem else _decay_problems(schedule, table, epochs)
    if problems:
        fail(CHECK, name, problems)
    if verbose:
        first, last = table[0][1], table[-1][1]
        print(f"✓ {CHECK} passed: a valid EDT schedule for {epochs} epochs, "
              f"CD weight {fmt(first['cd'])} -> {fmt(last['cd'])}.")


def check_my_weights(my_weights: Callable[[float, int], Mapping[str, float]], epochs: int = NOTEBOOK_EPOCHS,
                     verbose: bool = False) -> None:
    """:func:`check_schedule` on ``my_weights(epoch, epochs)`` as the notebook registers it, for ``epochs`` epochs."""
    schedule = lambda epoch: my_weights(epoch, epochs)  # noqa: E731 - the adapter the notebook registers
    schedule.__name__ = function_name(my_weights, "schedule")
    check_schedule(schedule, epochs, verbose=verbose)


def schedule_fingerprint(schedule: Callable[[float], Mapping[str, float]], epochs: int) -> str:
    """8 hex digits that change whenever the schedule's weights (over ``epochs``) change.

    Exercise 3 puts each version of a schedule in its own run folder, so that a
    changed schedule never resumes a finished run of the previous version.
    """
    h = hashlib.sha1(str(int(epochs)).encode())
    for epoch in epoch_grid(int(epochs)):
        weights = schedule(epoch)
        h.update(repr(sorted((k, round(float(v), 9)) for k, v in weights.items())).encode())
    return h.hexdigest()[:8]


# ---------------------------------------------------------------- grading: hidden cases and questions


def _probes(epochs: int) -> List[float]:
    """The epochs asked for in a run of ``epochs``: 1 .. epochs, with fractions the trainer may pass."""
    per_epoch = 3 if epochs <= 10 else 2 if epochs <= 50 else 1
    probes = [e + k / per_epoch for e in range(1, epochs + 1) for k in range(per_epoch)]
    if per_epoch == 1:
        probes += [e + 0.5 for e in range(1, epochs + 1, 10)]
    return sorted(probes)


def hidden_cases() -> List[dict]:
    """The grader's cases: one call my_weights(epoch, epochs) per probe of each run length."""
    cases = []
    for epochs in RUN_LENGTHS:
        for epoch in _probes(epochs):
            cases.append({"id": f"E{epochs}@{epoch:g}", "label": f"epoch {epoch:g} of a {epochs}-epoch run",
                          "args": [float(epoch), epochs], "epochs": epochs, "epoch": float(epoch)})
    return cases


def _answers(case: dict, outcome: dict, _all=None) -> Optional[str]:
    return answer_problem(outcome, case["epoch"])


def _run_rule(rule: Callable[[Table, int], Optional[str]]):
    """A rule about a whole run, judged at the run's first probe from all of the run's answers."""

    def check(case: dict, outcome: dict, answers: AllAnswers) -> Optional[str]:
        table: Table = []
        for probe in answers.cases:
            if probe["epochs"] != case["epochs"]:
                continue
            answer = answers.outcomes.get(probe["id"], {"error": "no outcome recorded"})
            problem = answer_problem(answer, probe["epoch"])
            if problem:
                return f"the run could not be judged ({probe['label']}: {problem})"
            table.append((probe["epoch"], answer["mapping"]))
        return rule(table, case["epochs"])

    return check


def _decays(table: Table, epochs: int) -> Optional[str]:
    never = never_decays_problem(table, epochs)
    hint = " Are its milestones fixed for one run length? Use the `epochs` argument."
    return rise_problem(table) or (never + hint if never else None)


_FIRST_PROBES = tuple(f"E{epochs}@1" for epochs in RUN_LENGTHS)

EXERCISE = Exercise(
    name="exercise3_edt_schedule",
    function="my_weights",
    signature="my_weights(epoch, epochs) -> {'ce': ..., 'cd': ..., 'gkd': ...}",
    check=check_schedule,
    cases=(),
    mistakes={},
    questions=(
        Question("answers", 2, "a dict of three finite, non-negative weights at every whole and fractional epoch",
                 tuple(c["id"] for c in hidden_cases()), _answers),
        Question("starts_at_6", 2, "the CD weight is 6 at epoch 1, for runs of 7, 45 and 200 epochs",
                 _FIRST_PROBES, _run_rule(lambda table, epochs: start_problem(table))),
        Question("decays", 4, "the CD weight never increases and has decayed by the end of each run",
                 _FIRST_PROBES, _run_rule(_decays)),
        Question("labels_on", 2, "the cross-entropy weight is positive at the end of each run",
                 _FIRST_PROBES, _run_rule(lambda table, epochs: labels_problem(table))),
    ),
    hidden_cases=hidden_cases,
    forbidden_modules=("cdlib.schedules", CLASSROOM),
    check_submission=check_my_weights,
)
