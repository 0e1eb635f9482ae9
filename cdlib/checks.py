"""Checks for the exercises: run a student's function against cdlib's and say what is wrong.

>>> from cdlib import checks
>>> checks.check_cd_loss(my_cd_loss)          # exercise 1
>>> checks.check_gkd_loss(my_gkd_loss)        # exercise 2
>>> checks.check_schedule(my_schedule, 30)    # exercise 3

Each check feeds the function random and adversarial inputs (different spatial
sizes per stage, a batch where the teacher is wrong on every sample, very large
logits, fractional epochs ...) and compares it with the library
(:func:`cdlib.losses.cd_loss`, :func:`cdlib.losses.gkd_loss`) or with the rules an
EDT schedule must follow. A pass prints one line. A failure raises
:class:`CheckFailed` whose message names the mistake in plain words — "you summed
where the paper averages", "forgot the T^2 factor" — found by comparing the
answer with a catalogue of the usual wrong implementations on the same inputs.

The checks use their own random generator: they never change the global torch
random state, and every run sees the same inputs.

:func:`schedule_fingerprint` and :func:`compare_schedules` support exercise 3
(a run folder per schedule version; an honest comparison against ``constant``).
"""

from __future__ import annotations

import hashlib
import math
import numbers
import statistics
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from . import losses

__all__ = [
    "CheckFailed",
    "check_cd_loss",
    "check_gkd_loss",
    "check_schedule",
    "schedule_fingerprint",
    "compare_schedules",
]

SCHEDULE_KEYS = ("ce", "cd", "gkd")
PAPER_CD_START = 6.0


class CheckFailed(AssertionError):
    """A check found a problem; the message says what it is, in plain words."""


# ============================================================================ helpers


def _name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


class _Found(Exception):
    """Internal: carries a check's diagnosis up to the public function, which raises CheckFailed
    from there (so a student's traceback is one frame deep into cdlib, not five)."""


def _fail(check: str, fn, problems: List[str]) -> None:
    head = f"{check} found {'a problem' if len(problems) == 1 else f'{len(problems)} problems'} in {_name(fn)}:"
    body = "\n".join("  - " + p.replace("\n", "\n    ") for p in problems)
    raise _Found(f"{head}\n{body}")


def _run_check(check: str, fn, body: Callable[[], None]) -> None:
    try:
        body()
    except NotImplementedError:
        message = str(_not_implemented(check, fn))
    except _Found as found:
        message = str(found)
    else:
        return
    raise CheckFailed(message)


def _fmt(x: float) -> str:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    return f"{x:.6g}"


def _close(a: float, b: float, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= atol + rtol * abs(b)


def _value(t: torch.Tensor) -> float:
    return float(t.detach().double())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Call:
    """The outcome of calling the student's function once."""

    def __init__(self, value=None, error: Optional[BaseException] = None):
        self.value, self.error = value, error

    @property
    def ok(self) -> bool:
        return self.error is None

    def number(self) -> float:
        v = self.value
        if isinstance(v, torch.Tensor):
            return float(v.detach().double().reshape(-1)[0]) if v.numel() == 1 else float("nan")
        return float(v)


def _call(fn, *args, **kwargs) -> _Call:
    try:
        return _Call(fn(*args, **kwargs))
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001 - every error is reported to the student
        return _Call(error=exc)


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _not_implemented(check: str, fn) -> CheckFailed:
    return CheckFailed(
        f"{check}: {_name(fn)} is not implemented yet (it raised NotImplementedError). "
        "Write your solution in place of the `raise NotImplementedError(...)` line, run that cell, then run this check again."
    )


def _output_problem(call: _Call, what: str, inputs_need_grad: bool = True) -> Optional[str]:
    """Problems with the type/shape/graph of a returned loss, or None."""
    v = call.value
    if isinstance(v, numbers.Number) or (type(v).__module__ == "numpy" and getattr(v, "ndim", 1) == 0):
        return (
            f"returned a Python float ({type(v).__name__} {v!r}), not a tensor: gradients don't flow through a "
            "plain number, so training could not learn from this loss. Return the torch tensor itself "
            "(no .item(), float(...) or .tolist())."
        )
    if not isinstance(v, torch.Tensor):
        return f"returned a {type(v).__name__}, expected a scalar torch tensor (one number: the loss)."
    if v.numel() != 1:
        return (
            f"returned a tensor of shape {tuple(v.shape)}, expected a single number (a 0-d tensor): "
            f"reduce the {what} to one value."
        )
    if not v.is_floating_point():
        return f"returned an integer tensor ({v.dtype}); the loss must be a floating-point tensor."
    if inputs_need_grad and v.grad_fn is None and not v.requires_grad:
        return (
            "gradients don't flow: the result is not connected to the student's inputs (did you call .item(), "
            ".detach(), .numpy(), torch.tensor(...) on an intermediate result, or compute it under torch.no_grad()?). "
            "Training needs the gradient of this loss with respect to the student."
        )
    return None


def _grad_of(fn_out: torch.Tensor, inputs: Sequence[torch.Tensor]) -> Optional[List[torch.Tensor]]:
    try:
        grads = torch.autograd.grad(fn_out.reshape(()), list(inputs), allow_unused=True)
    except Exception:  # noqa: BLE001
        return None
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def _grads_close(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], rtol=1e-3, atol=1e-7) -> bool:
    for x, y in zip(a, b):
        x, y = x.double(), y.double()
        if not torch.isfinite(x).all():
            return False
        scale = y.abs().max().item()
        if (x - y).abs().max().item() > atol + rtol * max(scale, 1e-12):
            return False
    return True


def _match(value: float, candidates: Sequence[Tuple[str, Callable[[], float]]], rtol: float = 1e-3) -> Optional[str]:
    """The message of the first known mistake whose value equals ``value``."""
    for message, compute in candidates:
        try:
            expected = float(compute())
        except Exception:  # noqa: BLE001 - a mistake that does not apply to these inputs
            continue
        if math.isfinite(expected) and abs(value - expected) <= 1e-7 + rtol * abs(expected):
            return message
    return None


def _snapshot(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


def _modified(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> bool:
    return any(not torch.equal(b, a.detach()) for b, a in zip(before, after))


# ============================================================================ CD


def _features(g: torch.Generator, n: int, c: int, h: int, w: int, grad: bool) -> torch.Tensor:
    """Post-ReLU-like maps whose channels have clearly different means."""
    scale = torch.rand(1, c, 1, 1, generator=g) * 2 + 0.2
    shift = torch.rand(1, c, 1, 1, generator=g) - 0.3
    x = F.relu(torch.randn(n, c, h, w, generator=g) * scale + shift)
    return x.requires_grad_(grad)


def _cd_case(seed: int, n: int, stages: Sequence[Tuple[int, Tuple[int, int], Tuple[int, int]]]):
    """(student feats with grad, teacher feats) for stages (channels, student HxW, teacher HxW)."""
    g = _gen(seed)
    s = [_features(g, n, c, *hs, grad=True) for c, hs, _ in stages]
    t = [_features(g, n, c, *ht, grad=False) for c, _, ht in stages]
    return s, t


def _ca(x: torch.Tensor) -> torch.Tensor:
    return x.double().mean(dim=(2, 3))


def _cd_mistakes(s: Sequence[torch.Tensor], t: Sequence[torch.Tensor]) -> List[Tuple[str, Callable[[], float]]]:
    """Known wrong CD losses, computed in float64 on the same inputs, with their diagnosis."""
    S = [x.detach().double() for x in s]
    T = [x.detach().double() for x in t]
    pairs = list(zip(S, T))

    def per_stage(stage_loss, combine=sum):
        return lambda: float(combine([stage_loss(a, b) for a, b in pairs]))

    def mean(xs):
        return sum(xs) / len(xs)

    d = lambda a, b: a.mean(dim=(2, 3)) - b.mean(dim=(2, 3))  # noqa: E731
    hint = "Each stage's loss is the MEAN over batch x channels of the squared difference of channel attentions."
    return [
        ("wrong reduction over channels: you summed where the paper averages. " + hint,
         per_stage(lambda a, b: d(a, b).pow(2).sum(1).mean())),
        ("wrong reduction over the batch: you summed over the samples where the paper averages. " + hint,
         per_stage(lambda a, b: d(a, b).pow(2).sum(0).mean())),
        ("wrong reduction: you summed over batch and channels where the paper averages "
         "(F.mse_loss(..., reduction='sum') does that). " + hint,
         per_stage(lambda a, b: d(a, b).pow(2).sum())),
        ("used max instead of mean pooling: channel attention is the spatial MEAN of each channel "
         "(global average pooling), x.mean(dim=(2, 3)).",
         per_stage(lambda a, b: (a.amax(dim=(2, 3)) - b.amax(dim=(2, 3))).pow(2).mean())),
        ("summed over H x W instead of averaging: channel attention is the spatial MEAN, 1/(HW) * sum, "
         "so maps of different sizes are comparable.",
         per_stage(lambda a, b: (a.sum(dim=(2, 3)) - b.sum(dim=(2, 3))).pow(2).mean())),
        ("did not square the difference: you averaged |w_S - w_T| (an L1 loss); CD is a mean SQUARED error.",
         per_stage(lambda a, b: d(a, b).abs().mean())),
        ("did not square the difference: you averaged w_S - w_T itself (positive and negative errors cancel); "
         "CD is a mean SQUARED error.",
         per_stage(lambda a, b: d(a, b).mean())),
        ("took a square root: you computed a root-mean-square (or norm) per stage; CD is the mean squared "
         "difference itself, no square root.",
         per_stage(lambda a, b: d(a, b).pow(2).mean().sqrt())),
        ("took the norm of the difference (torch.norm / a square root): CD is the mean squared difference, "
         "no square root.",
         per_stage(lambda a, b: d(a, b).norm())),
        ("multiplied by 1/2: CD is the plain mean squared difference, without a factor 1/2.",
         per_stage(lambda a, b: 0.5 * d(a, b).pow(2).mean())),
        ("averaged the stage losses: the paper SUMS the per-stage losses over the stages.",
         per_stage(lambda a, b: d(a, b).pow(2).mean(), combine=mean)),
        ("used only the last stage: CD sums the loss of every stage (layer1 ... layer4).",
         lambda: float(d(*pairs[-1]).pow(2).mean())),
        ("used only the first stage: CD sums the loss of every stage (layer1 ... layer4).",
         lambda: float(d(*pairs[0]).pow(2).mean())),
        ("compared the feature maps element by element (FitNets style) instead of their channel attention: "
         "average each map over H and W first, then compare the (N, C) attention vectors.",
         per_stage(lambda a, b: (a - b).pow(2).mean())),
        ("pooled the squared feature maps (attention-transfer style): channel attention is the spatial mean "
         "of the map itself; square the DIFFERENCE of the attentions, not the features.",
         per_stage(lambda a, b: (a.pow(2).mean(dim=(2, 3)) - b.pow(2).mean(dim=(2, 3))).pow(2).mean())),
        ("averaged over the wrong dimensions: you averaged over the channels (dim 1), which gives SPATIAL "
         "attention; channel attention averages over H and W (dims 2 and 3) and keeps one number per sample and channel.",
         per_stage(lambda a, b: (a.mean(dim=1) - b.mean(dim=1)).pow(2).mean())),
        ("averaged over the wrong dimensions: you averaged over channels, H and W (one number per sample); "
         "channel attention averages over H and W only (dims 2 and 3).",
         per_stage(lambda a, b: (a.mean(dim=(1, 2, 3)) - b.mean(dim=(1, 2, 3))).pow(2).mean())),
        ("averaged over the wrong dimensions: you averaged over one spatial dimension only; channel attention "
         "averages over both H and W (dims 2 and 3).",
         per_stage(lambda a, b: (a.mean(dim=2) - b.mean(dim=2)).pow(2).mean())),
        ("averaged over the wrong dimensions: you averaged over one spatial dimension only; channel attention "
         "averages over both H and W (dims 2 and 3).",
         per_stage(lambda a, b: (a.mean(dim=3) - b.mean(dim=3)).pow(2).mean())),
        ("averaged the attention over the batch before comparing: CD compares each sample's channel attention "
         "with the teacher's on the same sample, then averages the squared differences.",
         per_stage(lambda a, b: d(a, b).mean(0).pow(2).mean())),
        ("normalised the attention vectors (L2): CD compares the raw channel means, not unit vectors.",
         per_stage(lambda a, b: (F.normalize(a.mean(dim=(2, 3)), dim=1) - F.normalize(b.mean(dim=(2, 3)), dim=1)).pow(2).mean())),
        ("normalised the attention vectors (softmax over channels): CD compares the raw channel means.",
         per_stage(lambda a, b: (F.softmax(a.mean(dim=(2, 3)), dim=1) - F.softmax(b.mean(dim=(2, 3)), dim=1)).pow(2).mean())),
        ("compared the wrong stages: the student's stage k must be compared with the teacher's stage k "
         "(you paired them in reverse order).",
         lambda: float(sum(d(a, b).pow(2).mean() for a, b in zip(S, reversed(T))))),
        ("compared the wrong stages: the student's stage k must be compared with the teacher's stage k "
         "(your pairing is shifted by one).",
         lambda: float(sum(d(a, b).pow(2).mean() for a, b in zip(S, T[1:] + T[:1])))),
        ("compared the wrong stages: the student's stage k must be compared with the teacher's stage k "
         "(your pairing is shifted by one).",
         lambda: float(sum(d(a, b).pow(2).mean() for a, b in zip(S, T[-1:] + T[:-1])))),
    ]


# (channels, student H x W, teacher H x W) per stage.
_CD_BASE = [(4, (8, 8), (8, 8)), (8, (6, 6), (6, 6)), (16, (4, 4), (4, 4)), (32, (2, 2), (2, 2))]
_CD_SAME_SHAPES = [(6, (4, 4), (4, 4))] * 3
_CD_SIZES_DIFFER = [(4, (8, 8), (4, 4)), (8, (4, 4), (2, 2)), (16, (2, 2), (4, 4)), (8, (3, 5), (1, 1))]


def check_cd_loss(fn: Callable, verbose: bool = True) -> None:
    """Check ``fn(student_feats, teacher_feats) -> loss`` against :func:`cdlib.losses.cd_loss`.

    ``student_feats`` / ``teacher_feats`` are lists of (N, C, H, W) maps, one per
    stage, the student's already through its connectors (same C as the teacher's;
    H, W may differ). Raises :class:`CheckFailed` naming the mistake.
    """
    _run_check("check_cd_loss", fn, lambda: _check_cd_loss(fn, verbose))


def _check_cd_loss(fn: Callable, verbose: bool) -> None:
    check = "check_cd_loss"
    cases = [
        ("3 stages of identical shape", 29, 5, _CD_SAME_SHAPES),
        ("a batch of 6 with 4 stages (4 to 32 channels)", 30, 6, _CD_BASE),
        ("a batch of 1", 3, 1, _CD_BASE),
        ("2 stages only", 4, 6, _CD_BASE[:2]),
        ("1 stage only", 5, 6, _CD_BASE[2:3]),
    ]
    problems: List[str] = []
    checked = 0
    for label, seed, n, stages in cases:
        s, t = _cd_case(seed, n, stages)
        before = _snapshot(s + t)
        call = _call(fn, s, t)
        if not call.ok:
            hint = ""
            if len(stages) != 4:
                hint = (" Did you assume exactly 4 stages? Loop over zip(student_feats, teacher_feats) "
                        "instead of indexing stages 0..3.")
            elif n == 1:
                hint = " Did you squeeze away the batch dimension?"
            elif "must match the size" in str(call.error) or "size mismatch" in str(call.error):
                hint = (" The student's and teacher's maps of the SAME stage have the same number of channels: "
                        "did you compare the wrong stages? Pair them with zip(student_feats, teacher_feats).")
            problems.append(f"raised {_error_text(call.error)} on {label}.{hint}")
            break
        bad_output = _output_problem(call, "stages, batch and channels")
        if bad_output:
            problems.append(bad_output)
            break
        got, want = call.number(), _value(losses.cd_loss(s, t))
        if not math.isfinite(got):
            problems.append(f"returned {_fmt(got)} on {label} (cdlib.losses.cd_loss gives {_fmt(want)}).")
            break
        if not _close(got, want):
            diagnosis = _match(got, _cd_mistakes(s, t))
            where = f"(on {label}: you return {_fmt(got)}, cdlib.losses.cd_loss gives {_fmt(want)})"
            if diagnosis is None:
                if len(stages) != 4:
                    diagnosis = ("right for 4 stages but wrong for another number of stages: did you assume "
                                 "exactly 4? Loop over zip(student_feats, teacher_feats).")
                elif n == 1:
                    diagnosis = "wrong for a batch of one sample."
                else:
                    diagnosis = ("the value differs from the paper's loss and matches none of the usual mistakes: "
                                 "per stage, take each map's spatial mean (N, C), square the student-teacher "
                                 "difference, average over batch and channels; then sum over stages.")
            problems.append(f"{diagnosis}\n{where}")
            break
        want_grad = _grad_of(losses.cd_loss(s, t), s)
        got_grad = _grad_of(call.value, s)
        if got_grad is None or not _grads_close(got_grad, want_grad):
            problems.append(
                f"the value is right but the gradient with respect to the student's features is not (on {label}): "
                "did you detach part of the computation or modify a tensor in place?"
            )
            break
        if _modified(before, s + t):
            problems.append("modified the feature maps in place: a loss must leave its inputs unchanged.")
            break
        checked += 1

    if not problems:
        # Student and teacher maps of different spatial sizes (attention averages H, W away).
        s, t = _cd_case(6, 6, _CD_SIZES_DIFFER)
        call = _call(fn, s, t)
        want = _value(losses.cd_loss(s, t))
        if not call.ok:
            problems.append(
                "ignored spatial size differences: your function crashed when a student stage and its teacher stage "
                f"have different H x W ({_error_text(call.error)}). Channel attention averages each map over its "
                "own H and W first, so the sizes need not match; compare the (N, C) attention vectors, "
                "not the maps."
            )
        elif _output_problem(call, "stages, batch and channels") or not _close(call.number(), want):
            problems.append(
                "ignored spatial size differences: with student and teacher maps of different H x W your result "
                f"({_fmt(call.number()) if isinstance(call.value, torch.Tensor) else call.value!r}) differs from "
                f"cdlib.losses.cd_loss ({_fmt(want)}). Average each map over its own H and W (channel attention), "
                "then compare; don't resize or flatten the maps."
            )
        else:
            checked += 1

    if not problems:
        # Very large activations: a float32 computation must stay finite and accurate.
        s, t = _cd_case(7, 4, _CD_BASE)
        s = [(x.detach() * 1e3).requires_grad_(True) for x in s]
        t = [x * 1e3 for x in t]
        call = _call(fn, s, t)
        want = _value(losses.cd_loss(s, t))
        if not call.ok or _output_problem(call, "stages") or not _close(call.number(), want, rtol=1e-3):
            problems.append(
                f"wrong for large activations (about 1000): you return "
                f"{_error_text(call.error) if not call.ok else _fmt(call.number()) if isinstance(call.value, torch.Tensor) else call.value}, "
                f"cdlib.losses.cd_loss gives {_fmt(want)}. Compute in float32 (or higher)."
            )
        else:
            checked += 1

    if problems:
        _fail(check, fn, problems)
    if verbose:
        print(f"✓ {check} passed: {_name(fn)} matches cdlib.losses.cd_loss on {checked} test cases.")


# ============================================================================ GKD


def _kl_rows(s: torch.Tensor, t: torch.Tensor, ts: float = 1.0, tt: float = 1.0) -> torch.Tensor:
    """KL(softmax(t/tt) || softmax(s/ts)) per row, float64."""
    log_ps = F.log_softmax(s.double() / ts, dim=1)
    log_pt = F.log_softmax(t.double() / tt, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(1)


def _gkd_case(seed: int, n: int, c: int, n_right: int, scale: float = 2.0):
    """(student logits with grad, teacher logits, targets) with the teacher right on exactly n_right samples."""
    g = _gen(seed)
    s = (torch.randn(n, c, generator=g) * scale).requires_grad_(True)
    t = torch.randn(n, c, generator=g) * scale
    pred = t.argmax(1)
    right = torch.zeros(n, dtype=torch.bool)
    right[torch.randperm(n, generator=g)[:n_right]] = True
    wrong_label = (pred + 1 + torch.randint(0, c - 1, (n,), generator=g)) % c
    return s, t, torch.where(right, pred, wrong_label)


def _gkd_mistakes(s, t, y, T: float) -> List[Tuple[str, Callable[[], float]]]:
    S, Tl = s.detach().double(), t.detach().double()
    kept = (Tl.argmax(1) == y).double()
    n_kept = kept.sum().clamp_min(1)
    kl = _kl_rows(S, Tl, T, T)
    T2 = T * T
    log_ps, log_pt = F.log_softmax(S / T, 1), F.log_softmax(Tl / T, 1)
    ps, pt = log_ps.exp(), log_pt.exp()
    wrong = 1 - kept
    student_right = (S.argmax(1) == y).double()
    c = S.shape[1]
    return [
        ("kept the samples where the teacher is WRONG: GKD keeps the samples whose teacher prediction "
         "(argmax of the teacher's logits) EQUALS the label.",
         lambda: (kl * wrong).sum() / wrong.sum().clamp_min(1) * T2),
        ("chose the samples by the STUDENT's prediction: GKD keeps the samples where the TEACHER's argmax "
         "equals the label.",
         lambda: (kl * student_right).sum() / student_right.sum().clamp_min(1) * T2),
        ("averaged over the whole batch instead of the kept samples: divide the summed KL of the kept samples "
         "by the NUMBER OF KEPT samples, not by the batch size.",
         lambda: (kl * kept).sum() / len(kl) * T2),
        ("kept every sample: that is plain KD. GKD keeps only the samples the teacher classifies correctly "
         "(teacher argmax == label).",
         lambda: kl.mean() * T2),
        ("summed the KL of the kept samples without dividing by their number: GKD AVERAGES over the kept samples.",
         lambda: (kl * kept).sum() * T2),
        ("also averaged over the classes (F.kl_div(..., reduction='mean') does that): sum the KL over the "
         "classes, and average over the kept samples only.",
         lambda: (kl * kept).sum() / (n_kept * c) * T2),
        ("computed KL(student || teacher): distillation uses KL(teacher || student) = "
         "sum_j p_teacher_j * (log p_teacher_j - log p_student_j).",
         lambda: (((ps * (log_ps - log_pt)).sum(1)) * kept).sum() / n_kept * T2),
        ("passed probabilities where F.kl_div expects LOG-probabilities as its first argument: use "
         "F.kl_div(F.log_softmax(student / T, 1), F.softmax(teacher / T, 1), reduction='sum') (or log_target=True).",
         lambda: (((pt * (log_pt - ps)).sum(1)) * kept).sum() / n_kept * T2),
        ("computed the cross-entropy with the teacher's soft labels instead of the KL divergence: the gradient is "
         "the same, but the value includes the teacher's entropy. Use KL(teacher || student).",
         lambda: ((-(pt * log_ps).sum(1)) * kept).sum() / n_kept * T2),
        ("used a squared error between the probabilities instead of the KL divergence.",
         lambda: (((ps - pt).pow(2).sum(1)) * kept).sum() / n_kept * T2),
        ("used a squared error between the probabilities instead of the KL divergence.",
         lambda: (((ps - pt).pow(2).mean(1)) * kept).sum() / n_kept * T2),
        ("used a squared error between the logits instead of the KL divergence of the softened probabilities.",
         lambda: (((S - Tl).pow(2).mean(1)) * kept).sum() / n_kept),
    ]


def _gkd_temperature_mistakes(s, t, y, T: float) -> List[Tuple[str, Callable[[], float]]]:
    S, Tl = s.detach().double(), t.detach().double()
    kept = (Tl.argmax(1) == y).double()
    n_kept = kept.sum().clamp_min(1)

    def masked(kl):
        return (kl * kept).sum() / n_kept

    return [
        ("forgot the T^2 factor: multiply the KL by temperature**2 (Hinton et al.), so that the gradients keep "
         "their size whatever the temperature.",
         lambda: masked(_kl_rows(S, Tl, T, T))),
        ("multiplied by T instead of T^2: the factor is temperature**2.",
         lambda: masked(_kl_rows(S, Tl, T, T)) * T),
        ("divided by T^2 where KD multiplies by it: the factor is temperature**2, multiplied.",
         lambda: masked(_kl_rows(S, Tl, T, T)) / T**2),
        ("softened only the student's logits: divide BOTH the student's and the teacher's logits by T.",
         lambda: masked(_kl_rows(S, Tl, T, 1.0)) * T**2),
        ("softened only the student's logits: divide BOTH the student's and the teacher's logits by T.",
         lambda: masked(_kl_rows(S, Tl, T, 1.0))),
        ("softened only the teacher's logits: divide BOTH the student's and the teacher's logits by T.",
         lambda: masked(_kl_rows(S, Tl, 1.0, T)) * T**2),
        ("softened only the teacher's logits: divide BOTH the student's and the teacher's logits by T.",
         lambda: masked(_kl_rows(S, Tl, 1.0, T))),
        ("applied the T^2 factor but did not divide the logits by T: soften both with softmax(logits / T).",
         lambda: masked(_kl_rows(S, Tl, 1.0, 1.0)) * T**2),
        ("ignored the temperature argument: divide both logits by T, and multiply the KL by T^2.",
         lambda: masked(_kl_rows(S, Tl, 1.0, 1.0))),
        ("multiplied the logits by T instead of dividing them: softmax(logits / T).",
         lambda: masked(_kl_rows(S, Tl, 1 / T, 1 / T)) * T**2),
    ]


def check_gkd_loss(fn: Callable, verbose: bool = True) -> None:
    """Check ``fn(student_logits, teacher_logits, targets, temperature=1.0)`` against :func:`cdlib.losses.gkd_loss`.

    Raises :class:`CheckFailed` naming the mistake (wrong samples kept, wrong
    average, a missing T^2, NaN on a batch where the teacher is always wrong ...).
    """
    _run_check("check_gkd_loss", fn, lambda: _check_gkd_loss(fn, verbose))


def _check_gkd_loss(fn: Callable, verbose: bool) -> None:
    check = "check_gkd_loss"
    problems: List[str] = []
    ref = losses.gkd_loss

    def run_case(label, s, t, y, **kw) -> Optional[_Call]:
        call = _call(fn, s, t, y, **kw)
        if not call.ok:
            extra = ""
            if isinstance(call.error, TypeError) and "temperature" in str(call.error):
                extra = " Your function must accept the keyword argument temperature= (default 1.0), as in the task."
            problems.append(f"raised {_error_text(call.error)} on {label}.{extra}")
            return None
        bad = _output_problem(call, "batch")
        if bad:
            problems.append(bad)
            return None
        return call

    # ---- 1. an ordinary batch, T = 1: which samples, what average, which divergence
    label = "a batch of 12 (7 classes) where the teacher is right on 5 samples, temperature=1"
    s, t, y = _gkd_case(26, 12, 7, 5)
    before = _snapshot([s, t, y])
    call = run_case(label, s, t, y, temperature=1.0)
    if call is None:
        _fail(check, fn, problems)
    got, want = call.number(), _value(ref(s, t, y, temperature=1.0))
    base_ok = _close(got, want)
    if not math.isfinite(got):
        problems.append(
            f"returned {_fmt(got)} on {label} (cdlib.losses.gkd_loss gives {_fmt(want)}). Use F.log_softmax for the "
            "log-probabilities; if you call F.kl_div with log-probabilities as the target, pass log_target=True."
        )
    elif not base_ok:
        diagnosis = _match(got, _gkd_mistakes(s, t, y, 1.0))
        if diagnosis is None:
            s2, t2, y2 = _gkd_case(27, 8, 7, 8)
            all_right = _call(fn, s2, t2, y2, temperature=1.0)
            if all_right.ok and isinstance(all_right.value, torch.Tensor) and _close(
                all_right.number(), _value(losses.kd_loss(s2, t2, 1.0))
            ):
                diagnosis = ("right when the teacher is right on every sample, wrong otherwise: the divergence is fine, "
                             "so check WHICH samples you keep (teacher argmax == label) and that you divide by "
                             "their number.")
            else:
                diagnosis = ("the value matches none of the usual mistakes: per sample, KL(softmax(teacher/T) || "
                             "softmax(student/T)) summed over classes; keep the samples where the teacher's argmax "
                             "equals the label; average over the kept samples; multiply by T^2.")
        problems.append(f"{diagnosis}\n(on {label}: you return {_fmt(got)}, cdlib.losses.gkd_loss gives {_fmt(want)})")
    else:
        want_grad = _grad_of(ref(s, t, y, temperature=1.0), [s])
        got_grad = _grad_of(call.value, [s])
        if got_grad is None or not _grads_close(got_grad, want_grad):
            base_ok = False
            problems.append(
                f"the value is right but the gradient with respect to the student's logits is not (on {label}): "
                "did you detach part of the computation?"
            )
        elif _modified(before, [s, t, y]):
            base_ok = False
            problems.append("modified its inputs in place: a loss must leave the logits and targets unchanged.")

    # ---- 2. the temperature and its T^2 factor, and the default temperature
    if base_ok:
        label = "the same kind of batch with temperature=4"
        s, t, y = _gkd_case(15, 12, 7, 6)
        call = run_case(label, s, t, y, temperature=4.0)
        if call is not None:
            got, want = call.number(), _value(ref(s, t, y, temperature=4.0))
            if not _close(got, want):
                diagnosis = _match(got, _gkd_temperature_mistakes(s, t, y, 4.0)) or (
                    "right at temperature 1 but wrong at temperature 4: divide both logits by T before the softmax, "
                    "and multiply the KL by T^2."
                )
                problems.append(f"{diagnosis}\n(on {label}: you return {_fmt(got)}, cdlib.losses.gkd_loss gives {_fmt(want)})")
        s, t, y = _gkd_case(28, 10, 5, 4)
        call = _call(fn, s, t, y)
        if not call.ok:
            problems.append(f"raised {_error_text(call.error)} when called without a temperature: give it a default, "
                            "temperature=1.0 (the reference code's GKD uses T = 1).")
        elif isinstance(call.value, torch.Tensor) and call.value.numel() == 1:
            got = call.number()
            if not _close(got, _value(ref(s, t, y, temperature=1.0))):
                default = next((T for T in (2.0, 3.0, 4.0, 5.0, 10.0, 20.0) if _close(got, _value(ref(s, t, y, temperature=T)))), None)
                found = f"your default temperature is {default:g}" if default else "your default temperature is not 1"
                problems.append(f"{found}: GKD uses temperature=1.0 by default (the reference code's T = 1).")

    # ---- 3. no sample kept: the reference code's division by zero
    label = "a batch of 8 where the teacher is wrong on EVERY sample"
    s, t, y = _gkd_case(29, 8, 6, 0)
    call = _call(fn, s, t, y, temperature=1.0)
    if not call.ok:
        problems.append(
            f"crashed when no sample is kept ({_error_text(call.error)}), on {label}. Such batches happen: "
            "GKD must return 0 for them, e.g. divide by kept.sum().clamp_min(1)."
        )
    elif not isinstance(call.value, torch.Tensor):
        problems.append(
            f"returned a Python {type(call.value).__name__} ({call.value!r}) when no sample is kept: return a tensor "
            "(e.g. compute the masked sum and divide by kept.sum().clamp_min(1)); the trainer calls .detach() on "
            "every loss term."
        )
    elif call.value.numel() == 1:
        got = call.number()
        if math.isnan(got):
            problems.append(
                "NaN when no sample is kept (the teacher is wrong on every sample of the batch): you divide by the "
                "number of kept samples, which is 0, and 0/0 = NaN; the NaN reaches the gradients even when the GKD "
                "weight is 0. Return 0 for such a batch: divide by kept.sum().clamp_min(1)."
            )
        elif math.isinf(got):
            problems.append("infinite loss when no sample is kept: you divide by the number of kept samples, which is 0. "
                            "Return 0 for such a batch: divide by kept.sum().clamp_min(1).")
        elif got != 0.0 and abs(got) > 1e-7:
            if base_ok:
                problems.append(f"returned {_fmt(got)} when no sample is kept: with nothing to distil, GKD is 0 "
                                "(only the samples the teacher gets right take part).")
        elif call.value.requires_grad or call.value.grad_fn is not None:
            grad = _grad_of(call.value, [s])
            if grad is None or not torch.isfinite(grad[0]).all():
                problems.append(
                    "the value is 0 when no sample is kept, but its gradient is NaN: torch.where (or masking) after "
                    "a division by zero still back-propagates the NaN. Avoid the division by zero itself: divide by "
                    "kept.sum().clamp_min(1)."
                )

    # ---- 4. large logits: log(softmax(.)) underflows
    if base_ok:
        label = "logits of size about 100"
        s, t, y = _gkd_case(30, 10, 8, 5, scale=60.0)
        call = _call(fn, s, t, y, temperature=1.0)
        want = _value(ref(s, t, y, temperature=1.0))
        if not call.ok or not isinstance(call.value, torch.Tensor) or call.value.numel() != 1:
            what = _error_text(call.error) if not call.ok else repr(call.value)
            problems.append(f"failed on {label} ({what}).")
        else:
            got = call.number()
            grad = _grad_of(call.value, [s])
            if not math.isfinite(got) or grad is None or not torch.isfinite(grad[0]).all():
                problems.append(
                    f"numerically unstable: on {label} your function returns {_fmt(got)} (or a NaN gradient); "
                    "cdlib.losses.gkd_loss gives "
                    f"{_fmt(want)}. torch.log(F.softmax(x)) underflows to log(0) = -inf: use F.log_softmax(x, dim=1)."
                )
            elif not _close(got, want, rtol=1e-3, atol=1e-4):
                problems.append(f"inaccurate on {label}: you return {_fmt(got)}, cdlib.losses.gkd_loss gives {_fmt(want)}. "
                                "Use F.log_softmax rather than log(softmax).")

    if problems:
        _fail(check, fn, problems)
    if verbose:
        print(f"✓ {check} passed: {_name(fn)} matches cdlib.losses.gkd_loss, all-wrong batch included.")


# ============================================================================ schedules


def _grid(epochs: int, per_epoch: int = 4) -> List[float]:
    """Whole and fractional epochs the trainer may ask for: 1, 1.25, ..., epochs + 0.75."""
    return [e + k / per_epoch for e in range(1, epochs + 1) for k in range(per_epoch)]


def _as_weights(out, epoch: float) -> Tuple[Optional[Dict[str, float]], Optional[str]]:
    """The schedule's answer as {key: float}, or an error message."""
    if not isinstance(out, Mapping):
        return None, (f"schedule({epoch:g}) returned a {type(out).__name__}; it must return a dict "
                      "{'ce': ..., 'cd': ..., 'gkd': ...} of loss weights.")
    weights: Dict[str, float] = {}
    for key, value in out.items():
        if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
            return None, f"the weight {key!r} at epoch {epoch:g} is {value!r}, not a number."
        try:
            weights[key] = float(value)
        except (TypeError, ValueError):
            return None, f"the weight {key!r} at epoch {epoch:g} is {value!r}, not a number."
    return weights, None


def check_schedule(schedule: Callable[[float], Mapping[str, float]], epochs: int, verbose: bool = True) -> None:
    """Check that ``schedule(epoch) -> {"ce", "cd", "gkd"}`` is a valid EDT schedule for ``epochs`` epochs.

    Valid means: it answers for every whole and fractional epoch the trainer asks
    for (1-indexed, ``epoch + step / steps_per_epoch``) with exactly the three
    weights, all finite and non-negative; the CD weight starts at the paper's 6,
    never increases and has decayed by the last epoch; the cross-entropy weight is
    positive at the end. Raises :class:`CheckFailed` naming the first violation.
    """
    _run_check("check_schedule", schedule, lambda: _check_schedule(schedule, epochs, verbose))


def _check_schedule(schedule, epochs, verbose: bool) -> None:
    check = "check_schedule"
    if int(epochs) != epochs or epochs < 2:
        raise ValueError(f"check_schedule needs a whole number of epochs >= 2 to see a decay, got {epochs!r}.")
    epochs = int(epochs)
    problems: List[str] = []
    table: List[Tuple[float, Dict[str, float]]] = []
    for epoch in _grid(epochs):
        try:
            out = schedule(epoch)
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001
            if epoch != int(epoch):
                problems.append(
                    f"crashed at the fractional epoch {epoch:g} ({_error_text(exc)}): the trainer asks for the weights "
                    "at every step, with epoch + step / steps_per_epoch (e.g. 1.25). Use math.floor(epoch) if your "
                    "schedule only changes at whole epochs."
                )
            else:
                problems.append(
                    f"crashed at epoch {epoch:g} ({_error_text(exc)}): the trainer calls schedule(epoch) with a FLOAT, "
                    f"epoch + step / steps_per_epoch (1.0, 1.25, ...), counting epochs from 1 to {epochs}. "
                    "Use math.floor(epoch) or int(epoch) where you need a whole number."
                )
            break
        weights, error = _as_weights(out, epoch)
        if error:
            problems.append(error)
            break
        missing = [k for k in SCHEDULE_KEYS if k not in weights]
        unknown = [k for k in weights if k not in SCHEDULE_KEYS]
        if unknown:
            problems.append(
                f"unknown key(s) {', '.join(map(repr, unknown))} at epoch {epoch:g}: the trainer reads only 'ce', 'cd' "
                "and 'gkd' (lower case) and silently ignores anything else — a misspelt key is a weight that never applies."
            )
            break
        if missing:
            problems.append(
                f"no {', '.join(map(repr, missing))} weight at epoch {epoch:g}: return all three of 'ce', 'cd' and 'gkd' "
                "(a missing one would silently keep the recipe's fixed weight)."
            )
            break
        bad = next(((k, v) for k, v in weights.items() if not math.isfinite(v)), None)
        if bad:
            problems.append(f"the {bad[0]!r} weight is {bad[1]} at epoch {epoch:g}: every weight must be a finite number.")
            break
        neg = next(((k, v) for k, v in weights.items() if v < 0), None)
        if neg:
            problems.append(
                f"the {neg[0]!r} weight is negative ({_fmt(neg[1])}) at epoch {epoch:g}: a negative weight rewards the "
                "student for making that loss LARGER. Weights must be >= 0."
            )
            break
        table.append((epoch, weights))

    if not problems:
        cd = [(e, w["cd"]) for e, w in table]
        start = cd[0][1]
        if not _close(start, PAPER_CD_START, rtol=1e-6, atol=1e-9):
            hint = ""
            try:
                zero = _as_weights(schedule(0), 0)[0]
                if zero and _close(zero.get("cd", float("nan")), PAPER_CD_START, rtol=1e-6, atol=1e-9):
                    hint = (" Your schedule gives 6 at epoch 0: did you count epochs from 0? The trainer counts from 1 "
                            "(the first epoch is epoch=1).")
            except Exception:  # noqa: BLE001
                pass
            problems.append(f"the CD weight starts at {_fmt(start)} at epoch 1; the paper starts at lambda_CD = 6.{hint}")
        rise = next(((a, b) for a, b in zip(cd, cd[1:]) if b[1] > a[1] * (1 + 1e-9) + 1e-12), None)
        if rise:
            (e1, v1), (e2, v2) = rise
            problems.append(
                f"the CD weight increases, from {_fmt(v1)} at epoch {e1:g} to {_fmt(v2)} at epoch {e2:g}: "
                "EDT only ever DECAYS the teacher's weight (it may stay flat for a while)."
            )
        elif not problems and not cd[-1][1] < start * (1 - 1e-6):
            hint = ""
            try:
                later = [(e, float(schedule(float(e))["cd"])) for e in (2 * epochs, 5 * epochs, 10 * epochs)]
                first = next((e for e, v in later if v < start * (1 - 1e-6)), None)
                if first:
                    hint = (f" It does decay later (by epoch {first}): are its milestones fixed for a longer run, "
                            f"e.g. the paper's 200 epochs? Scale them with the `epochs` argument.")
            except Exception:  # noqa: BLE001
                pass
            problems.append(
                f"the CD weight never decays: it is still {_fmt(cd[-1][1])} at the last epoch ({epochs}). "
                f"That is the constant schedule, not EDT.{hint}"
            )
        ce_end = table[-1][1]["ce"]
        if ce_end <= 0:
            problems.append(
                "the cross-entropy weight is 0 at the last epoch: the student would not learn from the labels at the "
                "end. EDT turns the labels ON (the paper's warm-up only switches them off at the start)."
            )

    if problems:
        _fail(check, schedule, problems)
    if verbose:
        first, last = table[0][1], table[-1][1]
        print(
            f"✓ {check} passed: a valid EDT schedule for {epochs} epochs, "
            f"CD weight {_fmt(first['cd'])} -> {_fmt(last['cd'])}."
        )


def schedule_fingerprint(schedule: Callable[[float], Mapping[str, float]], epochs: int) -> str:
    """8 hex digits that change whenever the schedule's weights (over ``epochs``) change.

    Exercise 3 puts each version of a schedule in its own run folder, so that a
    changed schedule never resumes a finished run of the previous version.
    """
    h = hashlib.sha1(str(int(epochs)).encode())
    for epoch in _grid(int(epochs)):
        weights = schedule(epoch)
        h.update(repr(sorted((k, round(float(v), 9)) for k, v in weights.items())).encode())
    return h.hexdigest()[:8]


# ============================================================================ comparison


def _top1(x) -> float:
    if isinstance(x, numbers.Number):
        return float(x)
    final = getattr(x, "final", None)
    if isinstance(final, Mapping) and "top1" in final:
        return float(final["top1"])
    raise TypeError(f"expected a test accuracy (%) or a cdlib.train.RunResult, got {type(x).__name__}.")


def compare_schedules(results: Mapping[str, Sequence], baseline: str = "constant", n_test: Optional[int] = None,
                      verbose: bool = True) -> Dict[str, dict]:
    """Compare final test top-1 of schedules trained with the same seeds, against ``baseline``.

    ``results`` maps a schedule name to its runs, one per seed in the same seed
    order for every schedule (test accuracies in % or ``RunResult`` objects).
    The difference to the baseline is judged against two kinds of noise:

    * test-set noise: with ``n_test`` test images, an accuracy p is only known to
      about sqrt(p (1 - p) / n_test); for two models on the same images the
      difference is known to at most sqrt(2) times that;
    * training noise: with several seeds, the spread of the per-seed (paired)
      differences, as a standard error of their mean.

    A schedule "beats" the baseline when the mean difference exceeds twice the
    larger of the two; "is worse" when it is below minus that; otherwise the
    difference is "within noise". Prints a table and returns, per schedule,
    ``{"mean", "std", "diff", "noise", "verdict", "top1"}``. It reports; it never fails.
    """
    if baseline not in results:
        raise ValueError(f"no results for the baseline {baseline!r}; got {sorted(results)}.")
    acc = {name: [_top1(r) for r in runs] for name, runs in results.items()}
    k = len(acc[baseline])
    if any(len(v) != k for v in acc.values()):
        raise ValueError("every schedule needs one run per seed, in the same seed order.")
    out: Dict[str, dict] = {}
    lines = []
    width = max(len(n) for n in acc) + 2
    lines.append(f"{'schedule':<{width}}{'seeds':>6}{'test top-1 %':>16}   per seed")
    for name, v in acc.items():
        mean = statistics.fmean(v)
        std = statistics.stdev(v) if len(v) > 1 else float("nan")
        spread = f"{mean:.2f} ± {std:.2f}" if len(v) > 1 else f"{mean:.2f}"
        lines.append(f"{name:<{width}}{len(v):>6}{spread:>16}   " + ", ".join(f"{x:.2f}" for x in v))
        out[name] = {"top1": v, "mean": mean, "std": std}
    base_mean = out[baseline]["mean"]
    p = min(max(base_mean / 100, 0.0), 1.0)
    test_noise = 100 * math.sqrt(2 * p * (1 - p) / n_test) if n_test else float("nan")
    for name, v in acc.items():
        if name == baseline:
            continue
        diffs = [a - b for a, b in zip(v, acc[baseline])]
        diff = statistics.fmean(diffs)
        seed_noise = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        noise = max(x for x in (test_noise, seed_noise, 0.0) if not math.isnan(x))
        if noise == 0.0:
            verdict = "unknown (no noise estimate: pass n_test, or run several seeds)"
        elif diff > 2 * noise:
            verdict = f"beats {baseline}"
        elif diff < -2 * noise:
            verdict = f"is worse than {baseline}"
        else:
            verdict = "within noise"
        out[name].update(diff=diff, noise=noise, verdict=verdict)
        images = f" (about {abs(diff) * n_test / 100:.0f} of {n_test} test images)" if n_test else ""
        lines.append("")
        lines.append(f"{name} - {baseline}: {diff:+.2f} points{images}, averaged over {len(diffs)} seed(s).")
        parts = []
        if n_test:
            parts.append(f"test-set noise ±{test_noise:.2f}")
        if len(diffs) > 1:
            parts.append(f"seed-to-seed noise ±{seed_noise:.2f} (standard error of the paired differences)")
        lines.append("noise: " + ", ".join(parts) + f" -> {name} {verdict}"
                     + (" (|difference| < 2 x noise)." if verdict == "within noise" else "."))
        if len(diffs) == 1:
            lines.append("With one seed the training noise is not measured at all: run several seeds before "
                         "claiming a win.")
    out[baseline].update(diff=0.0, noise=test_noise, verdict="baseline")
    if verbose:
        print("\n".join(lines))
    return out
