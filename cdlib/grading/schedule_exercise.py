"""Hidden cases of exercise 3 (an EDT schedule ``my_weights(epoch, epochs)``) and its rules.

A schedule has no single right answer, so it is judged by the rules the task
states, written out here: it answers ``{"ce", "cd", "gkd"}`` with finite,
non-negative numbers at whole and fractional epochs; the CD weight is 6 at epoch
1, never increases, and has decayed by the last epoch; the cross-entropy weight
is positive at the end. The public check tries one run length (the notebook's
``EPOCHS``, 30) at quarter epochs; the hidden cases try runs of 7, 45 and 200
epochs at thirds, halves and whole epochs, so a schedule with milestones
hard-coded for one length fails.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional

from .assignments import AllAnswers, Assignment, Question

KEYS = ("ce", "cd", "gkd")
CD_START = 6.0
RUN_LENGTHS = (7, 45, 200)


def _probes(epochs: int) -> List[float]:
    """The epochs asked for in a run of ``epochs``: 1 .. epochs, with fractions the trainer may pass."""
    per_epoch = 3 if epochs <= 10 else 2 if epochs <= 50 else 1
    probes = [e + k / per_epoch for e in range(1, epochs + 1) for k in range(per_epoch)]
    if per_epoch == 1:
        probes += [e + 0.5 for e in range(1, epochs + 1, 10)]
    return sorted(probes)


def schedule_cases() -> List[dict]:
    cases = []
    for epochs in RUN_LENGTHS:
        for epoch in _probes(epochs):
            cases.append({"id": f"E{epochs}@{epoch:g}", "label": f"epoch {epoch:g} of a {epochs}-epoch run",
                          "args": [float(epoch), epochs], "epochs": epochs, "epoch": float(epoch)})
    return cases


def _weights(outcome: dict) -> tuple:
    """(weights, problem): the answer as {key: float}, or what is wrong with it."""
    if "error" in outcome:
        if outcome.get("not_implemented"):
            return None, "not implemented yet (the function raises NotImplementedError)."
        return None, f"the function raised {outcome['error']}."
    mapping = outcome.get("mapping")
    if mapping is None:
        return None, f"returned a {outcome.get('type')}, not a dict {{'ce': ..., 'cd': ..., 'gkd': ...}}."
    if sorted(mapping) != sorted(KEYS):
        return None, f"returned the keys {sorted(mapping)}; a schedule answers exactly 'ce', 'cd' and 'gkd'."
    for key in KEYS:
        value = mapping[key]
        if value is None or not math.isfinite(value):
            return None, f"the {key!r} weight is {outcome['mapping_repr'][key]}, not a finite number."
        if value < 0:
            return None, f"the {key!r} weight is negative ({value:.6g}); weights must be >= 0."
    return mapping, None


def _answers(case: dict, outcome: dict, _all=None) -> Optional[str]:
    return _weights(outcome)[1]


def _run(answers: AllAnswers, epochs: int) -> tuple:
    """([(epoch, weights)] over one run length, None), or (None, the first problem that stops judging it)."""
    table = []
    for case in answers.cases:
        if case["epochs"] != epochs:
            continue
        weights, problem = _weights(answers.outcomes.get(case["id"], {"error": "no outcome recorded"}))
        if problem:
            return None, f"{case['label']}: {problem}"
        table.append((case["epoch"], weights))
    return table, None


def _run_rule(rule: Callable[[list, int], Optional[str]]):
    """A rule about a whole run, judged at the run's first probe from all of the run's answers."""

    def check(case: dict, outcome: dict, answers: AllAnswers) -> Optional[str]:
        table, problem = _run(answers, case["epochs"])
        if problem:
            return f"the run could not be judged ({problem})"
        return rule(table, case["epochs"])

    return check


def _starts_at_6(table, epochs: int) -> Optional[str]:
    first = table[0][1]["cd"]
    if abs(first - CD_START) > 1e-6 * CD_START:
        return f"the CD weight at epoch 1 is {first:.6g}; the paper starts at 6 (epochs count from 1)."
    return None


def _decays(table, epochs: int) -> Optional[str]:
    for (e1, w1), (e2, w2) in zip(table, table[1:]):
        if w2["cd"] > w1["cd"] * (1 + 1e-9) + 1e-12:
            return f"the CD weight rises from {w1['cd']:.6g} at epoch {e1:g} to {w2['cd']:.6g} at epoch {e2:g}."
    start, end = table[0][1]["cd"], table[-1][1]["cd"]
    if not end < start * (1 - 1e-6):
        return (f"the CD weight never decays over the {epochs} epochs (still {end:.6g} at the end): "
                "are its milestones fixed for one run length? Use the `epochs` argument.")
    return None


def _labels_on(table, epochs: int) -> Optional[str]:
    epoch, weights = table[-1]
    if not weights["ce"] > 0:
        return (f"the cross-entropy weight is {weights['ce']:.6g} at epoch {epoch:g}, the end of the run: the "
                "student must learn from the labels at the end.")
    return None


def _first_probes() -> tuple:
    return tuple(f"E{epochs}@1" for epochs in RUN_LENGTHS)


SCHEDULE = Assignment(
    name="exercise3_edt_schedule",
    function="my_weights",
    signature="my_weights(epoch, epochs)",
    questions=(
        Question("answers", 2, "a dict of three finite, non-negative weights at every whole and fractional epoch",
                 tuple(c["id"] for c in schedule_cases()), _answers),
        Question("starts_at_6", 2, "the CD weight is 6 at epoch 1, for runs of 7, 45 and 200 epochs",
                 _first_probes(), _run_rule(_starts_at_6)),
        Question("decays", 4, "the CD weight never increases and has decayed by the end of each run",
                 _first_probes(), _run_rule(_decays)),
        Question("labels_on", 2, "the cross-entropy weight is positive at the end of each run",
                 _first_probes(), _run_rule(_labels_on)),
    ),
    make_cases=schedule_cases,
    forbidden_modules=("cdlib.schedules", "cdlib.checks"),
    public_check={"name": "check_schedule", "epochs": 30},
)
