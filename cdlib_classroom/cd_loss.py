"""Exercise 1, the CD loss: the public check ``check_cd_loss`` with its cases and catalogue of named
mistakes, the hidden cases the grader scores, and the exercise's record (:data:`EXERCISE`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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
from .outcome import close, fmt, loss_grads, loss_value, output_problem
from .record import CLASSROOM, Exercise, Mistake, Question

__all__ = ["check_cd_loss", "CdCase", "CASES", "SIZES_DIFFER", "LARGE", "MISTAKES", "make_inputs", "HIDDEN",
           "hidden_cases", "EXERCISE"]

CHECK = "check_cd_loss"
REDUCE_OVER = "stages, batch and channels"
Stage = Tuple[int, Tuple[int, int], Tuple[int, int]]  # (channels, student H x W, teacher H x W)


@dataclass(frozen=True)
class CdCase:
    label: str
    seed: int
    batch: int
    stages: Tuple[Stage, ...]
    scale: float = 1.0  # multiplies every feature map (large activations)


_FOUR = ((4, (8, 8), (8, 8)), (8, (6, 6), (6, 6)), (16, (4, 4), (4, 4)), (32, (2, 2), (2, 2)))
# The ordinary cases, in order; a value is diagnosed on the first one it gets wrong.
CASES: Tuple[CdCase, ...] = (
    CdCase("3 stages of identical shape", 29, 5, ((6, (4, 4), (4, 4)),) * 3),
    CdCase("a batch of 6 with 4 stages (4 to 32 channels)", 30, 6, _FOUR),
    CdCase("a batch of 1 with 4 stages", 3, 1, _FOUR),
    CdCase("2 stages only", 4, 6, _FOUR[:2]),
    CdCase("1 stage only", 5, 6, _FOUR[2:3]),
)
SIZES_DIFFER = CdCase("student and teacher maps of different H x W", 6, 6,
                      ((4, (8, 8), (4, 4)), (8, (4, 4), (2, 2)), (16, (2, 2), (4, 4)), (8, (3, 5), (1, 1))))
LARGE = CdCase("large activations (about 1000)", 7, 4, _FOUR, scale=1e3)


def _features(g: torch.Generator, n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Post-ReLU-like maps whose channels have clearly different means."""
    scale = torch.rand(1, c, 1, 1, generator=g) * 2 + 0.2
    shift = torch.rand(1, c, 1, 1, generator=g) - 0.3
    return F.relu(torch.randn(n, c, h, w, generator=g) * scale + shift)


def make_inputs(case: CdCase):
    """(student maps with grad, teacher maps) of ``case``, the same on every call."""
    g = generator(case.seed)
    s = [(_features(g, case.batch, c, *hs) * case.scale).requires_grad_(True) for c, hs, _ in case.stages]
    t = [_features(g, case.batch, c, *ht) * case.scale for c, _, ht in case.stages]
    return s, t


# ---------------------------------------------------------------- the catalogue


def _ca(x):
    return x.mean(dim=(2, 3))


def _d(a, b):
    return _ca(a) - _ca(b)


def _staged(stage_loss: Callable, combine: Callable = sum) -> Callable:
    """A wrong CD loss made of a per-stage loss, combined over the stages."""
    return lambda S, T: combine([stage_loss(a, b) for a, b in zip(S, T)])


def _mean(xs):
    return sum(xs) / len(xs)


_HINT = "Each stage's loss is the MEAN over batch x channels of the squared difference of channel attentions."
_DIMS = ("averaged over the wrong dimensions: you averaged over {what}; channel attention averages over H and W "
         "(dims 2 and 3) and keeps one number per sample and channel.")
_STAGES = "compared the wrong stages: the student's stage k must be compared with the teacher's stage k ({how})."

MISTAKES: Tuple[Mistake, ...] = (
    Mistake("sum_over_channels", "wrong reduction over channels: you summed where the paper averages. " + _HINT,
            _staged(lambda a, b: _d(a, b).pow(2).sum(1).mean())),
    Mistake("sum_over_batch", "wrong reduction over the batch: you summed over the samples where the paper averages. "
            + _HINT, _staged(lambda a, b: _d(a, b).pow(2).sum(0).mean())),
    Mistake("sum_over_batch_and_channels", "wrong reduction: you summed over batch and channels where the paper "
            "averages (F.mse_loss(..., reduction='sum') does that). " + _HINT,
            _staged(lambda a, b: _d(a, b).pow(2).sum())),
    Mistake("max_pooling", "used max instead of mean pooling: channel attention is the spatial MEAN of each channel "
            "(global average pooling), x.mean(dim=(2, 3)).",
            _staged(lambda a, b: (a.amax(dim=(2, 3)) - b.amax(dim=(2, 3))).pow(2).mean())),
    Mistake("sum_pooling", "summed over H x W instead of averaging: channel attention is the spatial MEAN, "
            "1/(HW) * sum, so maps of different sizes are comparable.",
            _staged(lambda a, b: (a.sum(dim=(2, 3)) - b.sum(dim=(2, 3))).pow(2).mean())),
    Mistake("absolute_difference", "did not square the difference: you averaged |w_S - w_T| (an L1 loss); CD is a "
            "mean SQUARED error.", _staged(lambda a, b: _d(a, b).abs().mean())),
    Mistake("plain_difference", "did not square the difference: you averaged w_S - w_T itself (positive and "
            "negative errors cancel); CD is a mean SQUARED error.", _staged(lambda a, b: _d(a, b).mean())),
    Mistake("root_mean_square", "took a square root: you computed a root-mean-square (or norm) per stage; CD is the "
            "mean squared difference itself, no square root.", _staged(lambda a, b: _d(a, b).pow(2).mean().sqrt())),
    Mistake("norm", "took the norm of the difference (torch.norm / a square root): CD is the mean squared "
            "difference, no square root.", _staged(lambda a, b: _d(a, b).norm())),
    Mistake("half", "multiplied by 1/2: CD is the plain mean squared difference, without a factor 1/2.",
            _staged(lambda a, b: 0.5 * _d(a, b).pow(2).mean())),
    Mistake("mean_over_stages", "averaged the stage losses: the paper SUMS the per-stage losses over the stages.",
            _staged(lambda a, b: _d(a, b).pow(2).mean(), combine=_mean)),
    Mistake("last_stage_only", "used only the last stage: CD sums the loss of every stage (layer1 ... layer4).",
            lambda S, T: _d(S[-1], T[-1]).pow(2).mean()),
    Mistake("first_stage_only", "used only the first stage: CD sums the loss of every stage (layer1 ... layer4).",
            lambda S, T: _d(S[0], T[0]).pow(2).mean()),
    Mistake("element_wise", "compared the feature maps element by element (FitNets style) instead of their channel "
            "attention: average each map over H and W first, then compare the (N, C) attention vectors.",
            _staged(lambda a, b: (a - b).pow(2).mean())),
    Mistake("pooled_squares", "pooled the squared feature maps (attention-transfer style): channel attention is the "
            "spatial mean of the map itself; square the DIFFERENCE of the attentions, not the features.",
            _staged(lambda a, b: (a.pow(2).mean(dim=(2, 3)) - b.pow(2).mean(dim=(2, 3))).pow(2).mean())),
    Mistake("spatial_attention", _DIMS.format(what="the channels (dim 1), which gives SPATIAL attention"),
            _staged(lambda a, b: (a.mean(dim=1) - b.mean(dim=1)).pow(2).mean())),
    Mistake("mean_over_all", _DIMS.format(what="channels, H and W (one number per sample)"),
            _staged(lambda a, b: (a.mean(dim=(1, 2, 3)) - b.mean(dim=(1, 2, 3))).pow(2).mean())),
    Mistake("mean_over_channels_and_h", _DIMS.format(what="channels and H (dims 1 and 2)"),
            _staged(lambda a, b: (a.mean(dim=(1, 2)) - b.mean(dim=(1, 2))).pow(2).mean())),
    Mistake("mean_over_channels_and_w", _DIMS.format(what="channels and W (dims 1 and 3)"),
            _staged(lambda a, b: (a.mean(dim=(1, 3)) - b.mean(dim=(1, 3))).pow(2).mean())),
    Mistake("mean_over_h_only", _DIMS.format(what="one spatial dimension only (dim 2)"),
            _staged(lambda a, b: (a.mean(dim=2) - b.mean(dim=2)).pow(2).mean())),
    Mistake("mean_over_w_only", _DIMS.format(what="one spatial dimension only (dim 3)"),
            _staged(lambda a, b: (a.mean(dim=3) - b.mean(dim=3)).pow(2).mean())),
    Mistake("batch_mean_first", "averaged the attention over the batch before comparing: CD compares each sample's "
            "channel attention with the teacher's on the same sample, then averages the squared differences.",
            _staged(lambda a, b: _d(a, b).mean(0).pow(2).mean())),
    Mistake("l2_normalised", "normalised the attention vectors (L2): CD compares the raw channel means, not unit "
            "vectors.", _staged(lambda a, b: (F.normalize(_ca(a), dim=1) - F.normalize(_ca(b), dim=1)).pow(2).mean())),
    Mistake("softmax_normalised", "normalised the attention vectors (softmax over channels): CD compares the raw "
            "channel means.", _staged(lambda a, b: (F.softmax(_ca(a), dim=1) - F.softmax(_ca(b), dim=1)).pow(2).mean())),
    Mistake("reversed_stages", _STAGES.format(how="you paired them in reverse order"),
            lambda S, T: sum(_d(a, b).pow(2).mean() for a, b in zip(S, reversed(T)))),
    Mistake("stages_shifted_forward", _STAGES.format(how="your pairing is shifted by one"),
            lambda S, T: sum(_d(a, b).pow(2).mean() for a, b in zip(S, T[1:] + T[:1]))),
    Mistake("stages_shifted_back", _STAGES.format(how="your pairing is shifted by one"),
            lambda S, T: sum(_d(a, b).pow(2).mean() for a, b in zip(S, T[-1:] + T[:-1]))),
)


# ---------------------------------------------------------------- running the cases


@dataclass
class _Outcome:
    case: CdCase
    student: List[torch.Tensor]
    teacher: List[torch.Tensor]
    result: Call
    want: float
    problem: Optional[str]  # None: right on this case; else "crash", "output", "value", "gradient", "in_place"


def _run(fn, case: CdCase) -> _Outcome:
    s, t = make_inputs(case)
    before = snapshot(s + t)
    result = call(fn, s, t)
    want = value(losses.cd_loss(s, t))
    outcome = _Outcome(case, s, t, result, want, None)
    if not result.ok:
        outcome.problem = "crash"
    elif result.output_problem(REDUCE_OVER):
        outcome.problem = "output"
    elif not close(result.number(), want, rtol=1e-3 if case.scale > 1 else 1e-4):
        outcome.problem = "value"
    elif not grads_close(grad_of(result.value, s), grad_of(losses.cd_loss(s, t), s)):
        outcome.problem = "gradient"
    elif modified(before, s + t):
        outcome.problem = "in_place"
    return outcome


def _stage_counts(outcomes: Sequence[_Outcome]) -> str:
    counts = sorted({len(o.case.stages) for o in outcomes})
    return " or ".join(str(c) for c in counts)


def _crash(bad: _Outcome, passed: Sequence[_Outcome]) -> str:
    error, case = bad.result.error, bad.case
    other_counts = [o for o in passed if len(o.case.stages) != len(case.stages)]
    if isinstance(error, IndexError) and other_counts:
        counts = _stage_counts(other_counts)
        return (f"right with {counts} stages, but raised {bad.result.shown()} on {case.label}: did you assume "
                f"exactly {counts} stages? Loop over zip(student_feats, teacher_feats) instead of indexing the stages.")
    if case.batch == 1 and passed and all(o.case.batch > 1 for o in passed):
        return (f"right on batches of several samples, but raised {bad.result.shown()} on {case.label}: "
                "did you squeeze away the batch dimension?")
    if "must match the size" in str(error) or "size mismatch" in str(error):
        return (f"raised {bad.result.shown()} on {case.label}. The student's and teacher's maps of the SAME stage "
                "have the same number of channels: did you compare the wrong stages? Pair them with "
                "zip(student_feats, teacher_feats).")
    return crash_report(error, case.label)


def _wrong_value(bad: _Outcome, passed: Sequence[_Outcome]) -> str:
    got, case = bad.result.number(), bad.case
    where = f"(on {case.label}: you return {fmt(got)}, cdlib.losses.cd_loss gives {fmt(bad.want)})"
    if not math.isfinite(got):
        return f"returned {fmt(got)} {where}."
    inputs = ([x.detach().double() for x in bad.student], [x.detach().double() for x in bad.teacher])
    mistake = match(got, MISTAKES, inputs)
    if mistake is not None:
        return f"{mistake.diagnosis}\n{where}"
    other_counts = [o for o in passed if len(o.case.stages) != len(case.stages)]
    if other_counts:
        diagnosis = (f"right with {_stage_counts(other_counts)} stages but wrong with {len(case.stages)}: does your "
                     "function depend on the number of stages? Loop over zip(student_feats, teacher_feats) and "
                     "sum the per-stage losses.")
    elif case.batch == 1 and passed:
        diagnosis = "right on batches of several samples but wrong for a batch of one sample."
    else:
        diagnosis = ("the value differs from the paper's loss and matches none of the usual mistakes: per stage, take "
                     "each map's spatial mean (N, C), square the student-teacher difference, average over batch and "
                     "channels; then sum over stages.")
    return f"{diagnosis}\n{where}"


def _problem(bad: _Outcome, passed: Sequence[_Outcome]) -> str:
    if bad.problem == "crash":
        return _crash(bad, passed)
    if bad.problem == "output":
        return bad.result.output_problem(REDUCE_OVER)
    if bad.problem == "value":
        return _wrong_value(bad, passed)
    if bad.problem == "gradient":
        return (f"the value is right but the gradient with respect to the student's features is not (on "
                f"{bad.case.label}): did you detach part of the computation or modify a tensor in place?")
    return "modified the feature maps in place: a loss must leave its inputs unchanged."


def _special(outcome: _Outcome) -> Optional[str]:
    """The problem of a special case (sizes differ, large values), once the ordinary cases pass."""
    if outcome.problem is None:
        return None
    if outcome.case is SIZES_DIFFER and outcome.problem == "crash":
        return ("ignored spatial size differences: your function crashed when a student stage and its teacher stage "
                f"have different H x W ({outcome.result.shown()}). Channel attention averages each map over its own "
                "H and W first, so the sizes need not match; compare the (N, C) attention vectors, not the maps.")
    if outcome.case is SIZES_DIFFER:
        return ("ignored spatial size differences: with student and teacher maps of different H x W your result "
                f"({outcome.result.shown()}) differs from cdlib.losses.cd_loss ({fmt(outcome.want)}). Average each "
                "map over its own H and W (channel attention), then compare; don't resize or flatten the maps.")
    return (f"wrong for {outcome.case.label}: you return {outcome.result.shown()}, cdlib.losses.cd_loss gives "
            f"{fmt(outcome.want)}. Compute in float32 (or higher).")


def check_cd_loss(fn: Callable, verbose: bool = True) -> None:
    """Check ``fn(student_feats, teacher_feats) -> loss`` against :func:`cdlib.losses.cd_loss`.

    ``student_feats`` / ``teacher_feats`` are lists of (N, C, H, W) maps, one per
    stage, the student's already through its connectors (same C as the teacher's;
    H, W may differ). Raises :class:`CheckFailed` naming the mistake.
    """
    name = function_name(fn)
    run_check(CHECK, name, lambda: _check(fn, name, verbose))


def _check(fn: Callable, name: str, verbose: bool) -> None:
    outcomes = [_run(fn, case) for case in CASES]
    passed = [o for o in outcomes if o.problem is None]
    bad = next((o for o in outcomes if o.problem is not None), None)
    if bad is not None:
        fail(CHECK, name, [_problem(bad, passed)])
    for case in (SIZES_DIFFER, LARGE):
        problem = _special(_run(fn, case))
        if problem:
            fail(CHECK, name, [problem])
    if verbose:
        print(f"✓ {CHECK} passed: {name} matches cdlib.losses.cd_loss on {len(CASES) + 2} test cases.")


# ---------------------------------------------------------------- grading: hidden cases and questions

# Not the public check's cases: other batch sizes, channel counts, stage counts (1 to 5) and spatial sizes
# (non-square, student and teacher different).
HIDDEN: Dict[str, CdCase] = {
    "cd-1": CdCase("2 stages of equal sizes, batch 3", 101, 3, ((5, (6, 6), (6, 6)), (9, (3, 3), (3, 3)))),
    "cd-2": CdCase("3 stages, batch 7 (3 to 24 channels)", 102, 7,
                   ((3, (5, 5), (5, 5)), (12, (4, 4), (4, 4)), (24, (2, 2), (2, 2)))),
    "cd-3": CdCase("1 stage of 33 channels, batch 2", 103, 2, ((33, (7, 7), (7, 7)),)),
    "cd-4": CdCase("5 stages, student and teacher maps of different (non-square) sizes, batch 5", 104, 5,
                   ((2, (9, 9), (3, 3)), (6, (6, 4), (2, 2)), (10, (4, 4), (8, 8)), (14, (1, 1), (5, 3)),
                    (20, (3, 2), (1, 1)))),
    "cd-5": CdCase("2 stages of different sizes, batch of 1", 105, 1, ((7, (5, 3), (2, 6)), (11, (2, 2), (4, 4)))),
}


def hidden_cases() -> List[dict]:
    """The grader's cases: inputs, and the right value and gradient (cdlib.losses.cd_loss in float64)."""
    out = []
    for case_id, case in HIDDEN.items():
        s, t = make_inputs(case)
        want, grads = references.answer(losses.cd_loss, [s, t])
        out.append({"id": case_id, "label": case.label, "args": [[x.detach() for x in s], t], "grad": [0],
                    "want": float(want), "want_grads": grads})
    return out


def _output(case: dict, outcome: dict, _all=None) -> Optional[str]:
    problem = output_problem(outcome, REDUCE_OVER)
    if problem is None and outcome.get("modified"):
        problem = "modified the feature maps in place: a loss must leave its inputs unchanged."
    return problem


EXERCISE = Exercise(
    name="exercise1_cd_loss",
    function="my_cd_loss",
    signature="my_cd_loss(student_feats, teacher_feats) -> 0-d tensor",
    check=check_cd_loss,
    cases=CASES + (SIZES_DIFFER, LARGE),
    mistakes={"value": MISTAKES},
    questions=(
        Question("output", 2, "returns a 0-d float tensor connected to the student's features, inputs unchanged",
                 ("cd-1", "cd-2", "cd-3", "cd-4", "cd-5"), _output),
        Question("value_same_size", 3, "the CD loss when student and teacher maps have equal sizes (1-3 stages)",
                 ("cd-1", "cd-2", "cd-3"), loss_value),
        Question("value_mixed_sizes", 3, "the CD loss when the maps' sizes differ (5 stages; a batch of 1)",
                 ("cd-4", "cd-5"), loss_value),
        Question("gradient", 2, "the gradient with respect to the student's features",
                 ("cd-1", "cd-2", "cd-4", "cd-5"), loss_grads),
    ),
    hidden_cases=hidden_cases,
    forbidden_modules=("cdlib.losses", "cdlib_bench.steps", CLASSROOM),
)
