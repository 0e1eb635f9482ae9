"""Hidden cases of exercises 1 (CD loss), 2 (GKD loss) and 4 (KD loss), and the reference they are judged by.

The cases are not the public check's (cdlib.checks): other batch sizes, channel
counts, stage counts (1 to 5), spatial sizes (non-square, student and teacher
different), temperatures (GKD 0.5 and 2.5 where its check uses 1 and 4; KD 0.5, 3
and 7 where its check uses 1, 2, 2.5 and 4) and logit scales. The reference values and gradients are computed here, in float64, from
the formulas of the paper as the notebooks state them — written out again, not
taken from cdlib.losses (tests/test_grade.py checks that the two agree).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from .assignments import Assignment, Question, grads_problem, output_problem, value_problem

Stage = Tuple[int, Tuple[int, int], Tuple[int, int]]  # channels, student (H, W), teacher (H, W)


# ============================================================================ exercise 1: CD


def reference_cd(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over stages of the mean over (batch, channels) of the squared difference of spatial means."""
    total = torch.zeros((), dtype=torch.float64)
    for s, t in zip(student, teacher):
        w_s = s.double().sum(dim=(2, 3)) / (s.shape[2] * s.shape[3])
        w_t = t.double().sum(dim=(2, 3)) / (t.shape[2] * t.shape[3])
        total = total + ((w_s - w_t) ** 2).sum() / (w_s.shape[0] * w_s.shape[1])
    return total


def _maps(g: torch.Generator, n: int, c: int, hw: Tuple[int, int]) -> torch.Tensor:
    """Non-negative maps (as after a ReLU) whose channels have clearly different means."""
    level = torch.rand(1, c, 1, 1, generator=g) * 3
    return torch.relu(torch.randn(n, c, *hw, generator=g) * (0.5 + level) + level - 0.5)


def _cd_case(case_id: str, label: str, seed: int, n: int, stages: Sequence[Stage]) -> dict:
    g = torch.Generator().manual_seed(seed)
    student = [_maps(g, n, c, s_hw) for c, s_hw, _ in stages]
    teacher = [_maps(g, n, c, t_hw) for c, _, t_hw in stages]
    s64 = [x.double().requires_grad_(True) for x in student]
    want = reference_cd(s64, teacher)
    grads = torch.autograd.grad(want, s64)
    return {"id": case_id, "label": label, "args": [student, teacher], "grad": [0],
            "want": float(want.detach()), "want_grads": [x.detach() for x in grads]}


def cd_cases() -> List[dict]:
    return [
        _cd_case("cd-1", "2 stages of equal sizes, batch 3", 101, 3, [(5, (6, 6), (6, 6)), (9, (3, 3), (3, 3))]),
        _cd_case("cd-2", "3 stages, batch 7 (3 to 24 channels)", 102, 7,
                 [(3, (5, 5), (5, 5)), (12, (4, 4), (4, 4)), (24, (2, 2), (2, 2))]),
        _cd_case("cd-3", "1 stage of 33 channels, batch 2", 103, 2, [(33, (7, 7), (7, 7))]),
        _cd_case("cd-4", "5 stages, student and teacher maps of different (non-square) sizes, batch 5", 104, 5,
                 [(2, (9, 9), (3, 3)), (6, (6, 4), (2, 2)), (10, (4, 4), (8, 8)), (14, (1, 1), (5, 3)),
                  (20, (3, 2), (1, 1))]),
        _cd_case("cd-5", "2 stages of different sizes, batch of 1", 105, 1, [(7, (5, 3), (2, 6)), (11, (2, 2), (4, 4))]),
    ]


def _cd_output(case: dict, outcome: dict, _all=None) -> Optional[str]:
    problem = output_problem(outcome)
    if problem is None and outcome.get("modified"):
        problem = "modified the feature maps in place: a loss must leave its inputs unchanged."
    return problem


def _cd_value(case: dict, outcome: dict, _all=None) -> Optional[str]:
    return value_problem(outcome, case["want"])


def _cd_grads(case: dict, outcome: dict, _all=None) -> Optional[str]:
    return grads_problem(outcome, case["want_grads"])


CD = Assignment(
    name="exercise1_cd_loss",
    function="my_cd_loss",
    signature="my_cd_loss(student_feats, teacher_feats)",
    questions=(
        Question("output", 2, "returns a 0-d float tensor connected to the student's features, inputs unchanged",
                 ("cd-1", "cd-2", "cd-3", "cd-4", "cd-5"), _cd_output),
        Question("value_same_size", 3, "the CD loss when student and teacher maps have equal sizes (1-3 stages)",
                 ("cd-1", "cd-2", "cd-3"), _cd_value),
        Question("value_mixed_sizes", 3, "the CD loss when the maps' sizes differ (5 stages; a batch of 1)",
                 ("cd-4", "cd-5"), _cd_value),
        Question("gradient", 2, "the gradient with respect to the student's features",
                 ("cd-1", "cd-2", "cd-4", "cd-5"), _cd_grads),
    ),
    make_cases=cd_cases,
    forbidden_modules=("cdlib.losses", "cdlib.checks"),
    public_check={"name": "check_cd_loss"},
)


# ============================================================================ exercise 2: GKD


def reference_gkd(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """T^2 / |kept| * sum over kept samples of KL(softmax(t/T) || softmax(s/T)); 0 when none is kept."""
    T = float(temperature)
    s = student.double() / T
    t = teacher.double() / T
    log_q = s - torch.logsumexp(s, dim=1, keepdim=True)
    log_p = t - torch.logsumexp(t, dim=1, keepdim=True)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    kept = teacher.argmax(dim=1) == targets
    if not kept.any():
        return (kl * 0).sum()  # 0, connected to the student, with a zero gradient
    return kl[kept].sum() / kept.sum() * T * T


def _gkd_case(case_id: str, label: str, seed: int, n: int, c: int, n_right: int, *, scale: float = 2.0,
              temperature: Optional[float] = None) -> dict:
    """A batch where the teacher is right on exactly ``n_right`` samples."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, c, generator=g) * scale
    teacher = torch.randn(n, c, generator=g) * scale * 1.5
    right = torch.zeros(n, dtype=torch.bool)
    right[torch.randperm(n, generator=g)[:n_right]] = True
    wrong_label = (teacher.argmax(dim=1) + 1 + torch.randint(0, c - 1, (n,), generator=g)) % c
    targets = torch.where(right, teacher.argmax(dim=1), wrong_label)
    T = 1.0 if temperature is None else temperature
    s64 = student.double().requires_grad_(True)
    want = reference_gkd(s64, teacher, targets, T)
    (grad,) = torch.autograd.grad(want, s64)
    kwargs = {} if temperature is None else {"temperature": temperature}
    return {"id": case_id, "label": label, "args": [student, teacher, targets], "kwargs": kwargs, "grad": [0],
            "want": float(want.detach()), "want_grads": [grad.detach()]}


def gkd_cases() -> List[dict]:
    return [
        _gkd_case("gkd-1", "batch 9, 4 classes, teacher right on 4, default temperature", 201, 9, 4, 4),
        _gkd_case("gkd-2", "batch 33, 13 classes, teacher right on 20, temperature=1.0", 202, 33, 13, 20,
                  temperature=1.0),
        _gkd_case("gkd-3", "a batch of 1 the teacher gets right, 6 classes", 203, 1, 6, 1, temperature=1.0),
        _gkd_case("gkd-4", "batch 10, 5 classes, teacher right on 7, temperature=2.5", 204, 10, 5, 7,
                  temperature=2.5),
        _gkd_case("gkd-5", "batch 6, 9 classes, teacher right on 2, temperature=0.5", 205, 6, 9, 2,
                  temperature=0.5),
        _gkd_case("gkd-6", "batch 5, 8 classes, teacher wrong on every sample", 206, 5, 8, 0, temperature=1.0),
        _gkd_case("gkd-7", "batch 8, 10 classes, logits of size about 200", 207, 8, 10, 5, scale=120.0,
                  temperature=1.0),
    ]


def _gkd_value(case: dict, outcome: dict, _all=None) -> Optional[str]:
    return value_problem(outcome, case["want"], rtol=1e-4)


def _gkd_grads(case: dict, outcome: dict, _all=None) -> Optional[str]:
    return grads_problem(outcome, case["want_grads"])


def _gkd_all_wrong(case: dict, outcome: dict, _all=None) -> Optional[str]:
    problem = output_problem(outcome, want_graph=False)
    if problem:
        return problem
    if outcome["value"] != 0.0:
        return f"returned {outcome['value']:.6g}; with no sample kept GKD is exactly 0 (the reference code's 0/0 = NaN)."
    for g in outcome.get("grads", []):
        if not bool(torch.isfinite(g).all()):
            return "the value is 0 but its gradient is NaN: avoid the division by zero itself (clamp_min(1))."
    return None


def _gkd_stable(case: dict, outcome: dict, _all=None) -> Optional[str]:
    problem = value_problem(outcome, case["want"], rtol=1e-3)
    if problem:
        return problem + " Use F.log_softmax: log(softmax(x)) underflows for large logits."
    for g in outcome.get("grads", []):
        if not bool(torch.isfinite(g).all()):
            return "the gradient is not finite for large logits: use F.log_softmax rather than log(softmax)."
    return None


GKD = Assignment(
    name="exercise2_gkd_loss",
    function="my_gkd_loss",
    signature="my_gkd_loss(student_logits, teacher_logits, targets, temperature=1.0)",
    questions=(
        Question("value_t1", 3, "the GKD loss at temperature 1 (the default), a batch of 1 included",
                 ("gkd-1", "gkd-2", "gkd-3"), _gkd_value),
        Question("temperature", 2, "the GKD loss at other temperatures (T^2 factor, softened distributions)",
                 ("gkd-4", "gkd-5"), _gkd_value),
        Question("all_wrong", 2, "exactly 0, with finite gradients, when the teacher is wrong on every sample",
                 ("gkd-6",), _gkd_all_wrong),
        Question("gradient", 2, "the gradient with respect to the student's logits",
                 ("gkd-1", "gkd-2", "gkd-4"), _gkd_grads),
        Question("stability", 1, "accurate and finite for very large logits", ("gkd-7",), _gkd_stable),
    ),
    make_cases=gkd_cases,
    forbidden_modules=("cdlib.losses", "cdlib.checks"),
    public_check={"name": "check_gkd_loss"},
)


# ============================================================================ exercise 4: KD with a temperature


def reference_kd(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * mean over the batch of KL(softmax(t/T) || softmax(s/T)) (Hinton et al. 2015)."""
    s = student.double() / T
    t = teacher.double() / T
    log_q = s - torch.logsumexp(s, dim=1, keepdim=True)
    log_p = t - torch.logsumexp(t, dim=1, keepdim=True)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean() * T * T


def _kd_case(case_id: str, label: str, seed: int, n: int, c: int, T: float, scale: float = 2.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(n, c, generator=g) * scale
    teacher = torch.randn(n, c, generator=g) * scale * 1.5
    s64 = student.double().requires_grad_(True)
    want = reference_kd(s64, teacher, T)
    (grad,) = torch.autograd.grad(want, s64)
    return {"id": case_id, "label": label, "args": [student, teacher, T], "grad": [0],
            "want": float(want.detach()), "want_grads": [grad.detach()]}


def kd_cases() -> List[dict]:
    return [
        _kd_case("kd-1", "batch 6, 11 classes, T=1", 401, 6, 11, 1.0),
        _kd_case("kd-2", "batch 21, 3 classes, T=3", 402, 21, 3, 3.0),
        _kd_case("kd-3", "a batch of 1, 40 classes, T=7", 403, 1, 40, 7.0),
        _kd_case("kd-4", "batch 5, 6 classes, T=0.5", 404, 5, 6, 0.5),
        _kd_case("kd-5", "batch 8, 12 classes, logits of size about 200, T=1.5", 405, 8, 12, 1.5, scale=120.0),
    ]


KD = Assignment(
    name="exercise4_kd_loss",
    function="my_kd_loss",
    signature="my_kd_loss(student_logits, teacher_logits, T)",
    questions=(
        Question("value_t1", 2, "the KD loss at T=1", ("kd-1",), _gkd_value),
        Question("temperature", 3, "the KD loss at T = 3, 7 and 0.5 (softened distributions, the T^2 factor)",
                 ("kd-2", "kd-3", "kd-4"), _gkd_value),
        Question("gradient", 3, "the gradient with respect to the student's logits, at several temperatures",
                 ("kd-1", "kd-2", "kd-4"), _gkd_grads),
        Question("stability", 2, "accurate and finite for very large logits", ("kd-5",), _gkd_stable),
    ),
    make_cases=kd_cases,
    forbidden_modules=("cdlib.losses", "cdlib.checks"),
    public_check={"name": "check_kd_loss"},
)
