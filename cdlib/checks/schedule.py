"""Exercise 3, an EDT schedule: ``check_schedule`` (the rules a schedule must follow) and
``schedule_fingerprint``. Unlike the loss checks there is no single right answer to compare with."""

from __future__ import annotations

import hashlib
import inspect
import math
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from .. import terms
from .common import close, error_text, fail, fmt, function_name, run_check, student_line

__all__ = ["check_schedule", "schedule_fingerprint", "epoch_grid", "PAPER_CD_START", "PAPER_MILESTONES"]

CHECK = "check_schedule"
PAPER_CD_START = 6.0
# The reference code's EDT milestones (paper.md), to recognise a schedule hard-coded for them.
PAPER_MILESTONES = {60: "the CIFAR-100 recipe's first milestone (of 200 epochs)",
                    160: "the CIFAR-100 recipe's second milestone (of 200 epochs)",
                    30: "the ImageNet recipe's first milestone (of 100 epochs)",
                    90: "the ImageNet recipe's third milestone (of 100 epochs)"}
Weights = Dict[str, float]


def epoch_grid(epochs: int, per_epoch: int = 4) -> List[float]:
    """Whole and fractional epochs the trainer may ask for: 1, 1.25, ..., epochs + 0.75."""
    return [e + k / per_epoch for e in range(1, epochs + 1) for k in range(per_epoch)]


def _as_weights(out, epoch: float) -> Tuple[Optional[Weights], Optional[str]]:
    """The schedule's answer as {key: float}, or an error message."""
    if not isinstance(out, Mapping):
        return None, (f"schedule({epoch:g}) returned a {type(out).__name__}; it must return a dict "
                      "{'ce': ..., 'cd': ..., 'gkd': ...} of loss weights.")
    weights: Weights = {}
    for key, v in out.items():
        try:
            if isinstance(v, bool) or v is None or isinstance(v, (str, bytes)):
                raise TypeError
            weights[key] = float(v)
        except (TypeError, ValueError):
            return None, f"the weight {key!r} at epoch {epoch:g} is {v!r}, not a number."
    return weights, None


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


def _rule_problem(weights: Weights, epoch: float) -> Optional[str]:
    """A broken rule of one answer: keys, finiteness, sign."""
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


def _table(schedule, epochs: int) -> Tuple[List[Tuple[float, Weights]], Optional[str]]:
    """The schedule's weights on the epoch grid, or the first problem met."""
    table: List[Tuple[float, Weights]] = []
    for epoch in epoch_grid(epochs):
        try:
            out = schedule(epoch)
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error is reported to the student
            return table, _crash(exc, epoch, epochs)
        weights, problem = _as_weights(out, epoch)
        problem = problem or _rule_problem(weights, epoch)
        if problem:
            return table, problem
        table.append((epoch, weights))
    return table, None


def _cd(schedule, epoch: float) -> Optional[float]:
    try:
        return float(schedule(epoch)["cd"])
    except Exception:  # noqa: BLE001 - only a hint depends on it
        return None


def _start_problem(schedule, start: float) -> Optional[str]:
    if close(start, PAPER_CD_START, rtol=1e-6, atol=1e-9):
        return None
    at_zero = _cd(schedule, 0)
    hint = (" Your schedule gives 6 at epoch 0: did you count epochs from 0? The trainer counts from 1 (the first "
            "epoch is epoch=1)." if at_zero is not None and close(at_zero, PAPER_CD_START, 1e-6, 1e-9) else "")
    return f"the CD weight starts at {fmt(start)} at epoch 1; the paper starts at lambda_CD = 6.{hint}"


def _never_decays(schedule, epochs: int, start: float, last: float) -> str:
    """The CD weight is flat over the run; say when it does decay, if it does within 10x the run."""
    hint = ""
    first = next((e for e in range(epochs + 1, 10 * epochs + 1)
                  if (cd := _cd(schedule, float(e))) is not None and cd < start * (1 - 1e-6)), None)
    if first is not None:
        milestone = PAPER_MILESTONES.get(first)
        hint = (f" It does decay later: it is first below {fmt(start)} at epoch {first}, after the run's last epoch "
                f"({epochs}). Are its milestones fixed numbers? Derive them from the `epochs` argument.")
        if milestone:
            hint += f" (Epoch {first} is {milestone}.)"
    return (f"the CD weight never decays: it is still {fmt(last)} at the last epoch ({epochs}). That is the constant "
            f"schedule, not EDT.{hint}")


def _decay_problems(schedule, table, epochs: int) -> List[str]:
    cd = [(e, w["cd"]) for e, w in table]
    start = cd[0][1]
    problems = [p for p in [_start_problem(schedule, start)] if p]
    rise = next(((a, b) for a, b in zip(cd, cd[1:]) if b[1] > a[1] * (1 + 1e-9) + 1e-12), None)
    if rise:
        (e1, v1), (e2, v2) = rise
        problems.append(f"the CD weight increases, from {fmt(v1)} at epoch {e1:g} to {fmt(v2)} at epoch {e2:g}: EDT "
                        "only ever DECAYS the teacher's weight (it may stay flat for a while).")
    elif not problems and not cd[-1][1] < start * (1 - 1e-6):
        problems.append(_never_decays(schedule, epochs, start, cd[-1][1]))
    if table[-1][1]["ce"] <= 0:
        problems.append("the cross-entropy weight is 0 at the last epoch: the student would not learn from the labels "
                        "at the end. EDT turns the labels ON (the paper's warm-up only switches them off at the start).")
    return problems


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
