"""cdlib_classroom's instant checks: each check PASSES right implementations and FAILS typical wrong
ones, naming the mistake in plain words (not just "assertion failed").

The right implementations are cdlib's own functions, small independent rewrites, and the solutions in the
instructor notebooks (notebooks/exercises/), executed from the notebook source so the test follows the
notebook. Exercises 1 (CD), 2 (GKD), 3 (EDT schedule), 4 (KD with a temperature) and 5 (channel attention
and connector); each catalogued mistake is run as a student's answer and must be diagnosed as itself, and so
must hand-written wrong answers of the kinds students write (F.kl_div misuse, a Sequential in the wrong
order ...).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cdlib import losses, schedules
from cdlib.connectors import Connector
from cdlib.errors import ConfigError
from cdlib_classroom import cd_loss, checks, connector, exercises, gkd_loss, kd_loss
from cdlib_classroom.record import Mistake

REPO = Path(__file__).resolve().parent.parent


# ============================================================================ helpers


def _defined(folder: str, notebook: str, name: str, marker: str = "### BEGIN SOLUTION"):
    """What the marked cells of a notebook define under ``name`` (run with the notebook's imports)."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(REPO / folder / notebook, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and marker in c.source]
    assert cells, f"{notebook}: no cell with {marker!r}"
    namespace: dict = {"torch": torch, "F": F, "nn": nn, "math": math}
    for cell in cells:
        exec(compile(cell.source, f"{notebook}:{name}", "exec"), namespace)
    assert name in namespace, f"the marked cells of {notebook} define no {name}"
    return namespace[name]


def _solution(notebook: str, name: str):
    """The function ``name`` defined by the solution cells of an instructor notebook."""
    return _defined("notebooks/exercises", notebook, name)


def _fails_with(check, fn, *expected: str, **kw) -> str:
    with pytest.raises(checks.CheckFailed) as info:
        check(fn, **kw)
    message = str(info.value)
    for text in expected:
        assert text in message, f"expected {text!r} in the diagnosis of {getattr(fn, '__name__', fn)}, got:\n{message}"
    assert "assert" not in message.lower().split(":")[0]
    return message


def _passes(check, fn, capsys, *args):
    check(fn, *args)
    out = capsys.readouterr().out
    assert out.startswith("✓"), out
    assert len(out.splitlines()) == 1, f"a passing check prints one short line, got:\n{out}"


def _ca(x):
    return x.mean(dim=(2, 3))


# ============================================================================ CD: right


def cd_loop(student_feats, teacher_feats):
    total = 0
    for s, t in zip(student_feats, teacher_feats):
        total = total + ((_ca(s) - _ca(t)) ** 2).mean()
    return total


def cd_mse(student_feats, teacher_feats):
    return sum(F.mse_loss(F.adaptive_avg_pool2d(s, 1).flatten(1), F.adaptive_avg_pool2d(t, 1).flatten(1))
               for s, t in zip(student_feats, teacher_feats))


@pytest.mark.parametrize("fn", [losses.cd_loss, cd_loop, cd_mse], ids=["cdlib", "loop", "mse_loss"])
def test_check_cd_loss_passes_right_implementations(fn, capsys):
    _passes(checks.check_cd_loss, fn, capsys)


def test_check_cd_loss_passes_the_instructor_solution(capsys):
    _passes(checks.check_cd_loss, _solution("exercise1_cd_loss.ipynb", "my_cd_loss"), capsys)


# ============================================================================ CD: wrong


def cd_sum_channels(S, T):
    return sum(((_ca(s) - _ca(t)) ** 2).sum(1).mean() for s, t in zip(S, T))


def cd_sum_batch(S, T):
    return sum(((_ca(s) - _ca(t)) ** 2).sum(0).mean() for s, t in zip(S, T))


def cd_mse_sum(S, T):
    return sum(F.mse_loss(_ca(s), _ca(t), reduction="sum") for s, t in zip(S, T))


def cd_max_pool(S, T):
    return sum(((s.amax(dim=(2, 3)) - t.amax(dim=(2, 3))) ** 2).mean() for s, t in zip(S, T))


def cd_sum_pool(S, T):
    return sum(((s.sum(dim=(2, 3)) - t.sum(dim=(2, 3))) ** 2).mean() for s, t in zip(S, T))


def cd_abs(S, T):
    return sum((_ca(s) - _ca(t)).abs().mean() for s, t in zip(S, T))


def cd_plain_diff(S, T):
    return sum((_ca(s) - _ca(t)).mean() for s, t in zip(S, T))


def cd_rmse(S, T):
    return sum(((_ca(s) - _ca(t)) ** 2).mean().sqrt() for s, t in zip(S, T))


def cd_norm(S, T):
    return sum(torch.norm(_ca(s) - _ca(t)) for s, t in zip(S, T))


def cd_mean_stages(S, T):
    return sum(((_ca(s) - _ca(t)) ** 2).mean() for s, t in zip(S, T)) / len(S)


def cd_last_stage(S, T):
    return ((_ca(S[-1]) - _ca(T[-1])) ** 2).mean()


def cd_feature_mse(S, T):
    return sum(F.mse_loss(s, t) for s, t in zip(S, T))


def cd_spatial_attention(S, T):
    return sum(((s.mean(1) - t.mean(1)) ** 2).mean() for s, t in zip(S, T))


def cd_reversed_stages(S, T):
    return sum(((_ca(s) - _ca(t)) ** 2).mean() for s, t in zip(S, reversed(T)))


def cd_batch_mean_first(S, T):
    return sum(((_ca(s).mean(0) - _ca(t).mean(0)) ** 2).mean() for s, t in zip(S, T))


def cd_python_float(S, T):
    return float(losses.cd_loss(S, T).detach())


def cd_item(S, T):
    return losses.cd_loss(S, T).detach().item()


def cd_detached(S, T):
    return losses.cd_loss([s.detach() for s in S], T)


def cd_no_grad(S, T):
    with torch.no_grad():
        return losses.cd_loss(S, T)


def cd_four_stages(S, T):
    return sum(((_ca(S[k]) - _ca(T[k])) ** 2).mean() for k in range(4))


def cd_per_stage_vector(S, T):
    return torch.stack([((_ca(s) - _ca(t)) ** 2).mean() for s, t in zip(S, T)])


def cd_resize_student(S, T):
    # Pools over the TEACHER's spatial size after flattening: wrong when sizes differ.
    out = 0
    for s, t in zip(S, T):
        h, w = t.shape[2:]
        out = out + ((s.flatten(2)[..., : h * w].mean(2) - _ca(t)) ** 2).mean()
    return out


def cd_softmax_attention(S, T):
    return sum(((F.softmax(_ca(s), 1) - F.softmax(_ca(t), 1)) ** 2).mean() for s, t in zip(S, T))


def cd_in_place(S, T):
    for s in S:
        s.data.mul_(1.0).add_(0.0)
    for t in T:
        t.mul_(2.0)
    return cd_loop(S, T)


def cd_not_implemented(S, T):
    raise NotImplementedError("write your solution here")


CD_WRONG = [
    (cd_sum_channels, "wrong reduction over channels: you summed where the paper averages"),
    (cd_sum_batch, "wrong reduction over the batch"),
    (cd_mse_sum, "summed over batch and channels where the paper averages"),
    (cd_max_pool, "used max instead of mean pooling"),
    (cd_sum_pool, "summed over H x W instead of averaging"),
    (cd_abs, "did not square the difference"),
    (cd_plain_diff, "did not square the difference"),
    (cd_rmse, "took a square root"),
    (cd_norm, "took the norm of the difference"),
    (cd_mean_stages, "averaged the stage losses: the paper SUMS"),
    (cd_last_stage, "used only the last stage"),
    (cd_feature_mse, "compared the feature maps element by element"),
    (cd_spatial_attention, "averaged over the wrong dimensions"),
    (cd_reversed_stages, "compared the wrong stages"),
    (cd_batch_mean_first, "averaged the attention over the batch before comparing"),
    (cd_softmax_attention, "normalised the attention vectors"),
    (cd_python_float, "returned a Python float"),
    (cd_item, "returned a Python float"),
    (cd_detached, "gradients don't flow"),
    (cd_no_grad, "gradients don't flow"),
    (cd_four_stages, "assume exactly 4 stages"),
    (cd_per_stage_vector, "expected a single number"),
    (cd_resize_student, "ignored spatial size differences"),
    (cd_in_place, "modified the feature maps in place"),
]


@pytest.mark.parametrize("fn, diagnosis", CD_WRONG)
def test_check_cd_loss_names_the_mistake(fn, diagnosis):
    message = _fails_with(checks.check_cd_loss, fn, diagnosis)
    assert fn.__name__ in message


def test_check_cd_loss_crash_on_spatial_mismatch_is_named():
    def cd_fitnets_crash(S, T):  # element-wise on the maps: crashes when H x W differ
        return sum(((s - t) ** 2).mean(dim=(2, 3)).mean() * 0 + ((_ca(s) - _ca(t)) ** 2).mean() for s, t in zip(S, T))

    _fails_with(checks.check_cd_loss, cd_fitnets_crash, "ignored spatial size differences", "crashed")


def test_check_cd_loss_says_not_implemented():
    with pytest.raises(checks.CheckFailed, match="not implemented yet"):
        checks.check_cd_loss(cd_not_implemented)


def test_cd_mistake_catalogue_is_unambiguous():
    """On the check's inputs, no two known mistakes give the same value, nor the right one."""
    for case in cd_loss.CASES[:2]:
        s, t = cd_loss.make_inputs(case)
        right = float(losses.cd_loss(s, t).detach())
        S, T = [x.detach().double() for x in s], [x.double() for x in t]
        values = {}
        for mistake in cd_loss.MISTAKES:
            try:
                v = float(mistake.wrong(S, T))
            except RuntimeError:  # e.g. stages paired wrongly do not fit together here
                continue
            assert not math.isclose(v, right, rel_tol=1e-3), f"mistake equals the right loss: {mistake.name}"
            for other, (w, diagnosis) in values.items():
                if diagnosis != mistake.diagnosis:
                    assert not math.isclose(v, w, rel_tol=1e-3), f"ambiguous: {mistake.name} vs {other}"
            values[mistake.name] = (v, mistake.diagnosis)


@pytest.mark.parametrize("mistake", cd_loss.MISTAKES, ids=lambda m: m.name)
def test_check_cd_loss_names_each_catalogued_mistake(mistake):
    """Each catalogue entry, run as a student's function, is diagnosed as itself."""
    _fails_with(checks.check_cd_loss, mistake.wrong, mistake.diagnosis)


# ---------------------------------------------------------------- CD: honest hints


def cd_typo(S, T):
    total = 0
    for s, _t in zip(S, T):
        total = total + ((_ca(s) - _ca(tt)) ** 2).mean()  # noqa: F821 - the typo under test
    return total


def test_check_cd_loss_reports_an_error_in_the_code_as_that_error():
    message = _fails_with(checks.check_cd_loss, cd_typo, "raised NameError: name 'tt' is not defined",
                          "fix the error first")
    assert "stages" not in message.split("NameError")[1].split("fix the error")[0].replace("3 stages of identical", "")
    assert "assume" not in message


def test_check_cd_loss_claims_a_stage_count_only_where_a_case_tested_it():
    # Right on 4-stage cases, IndexError with 3 stages: the hint may say "4 stages".
    message = _fails_with(checks.check_cd_loss, cd_four_stages, "right with 4 stages", "IndexError",
                          "assume exactly 4 stages")
    assert "3 stages of identical shape" in message

    def first_three_stages(S, T):  # right with 1, 2 and 3 stages, wrong with 4
        return sum(((_ca(s) - _ca(t)) ** 2).mean() for s, t in list(zip(S, T))[:3])

    _fails_with(checks.check_cd_loss, first_three_stages, "right with 1 or 2 or 3 stages but wrong with 4")

    def wrong_dims(S, T):  # mean(dim=(1, 2)) is wrong for every number of stages
        return sum(((s.mean(dim=(1, 2)) - t.mean(dim=(1, 2))) ** 2).mean() for s, t in zip(S, T))

    message = _fails_with(checks.check_cd_loss, wrong_dims, "averaged over the wrong dimensions", "dims 1 and 2")
    assert "4 stages" not in message and "number of stages" not in message


def test_check_cd_loss_unexplained_value_claims_nothing_untested():
    def weighted_by_channels(S, T):  # wrong on every case, no catalogued mistake
        return sum(((_ca(s) - _ca(t)) ** 2).mean() * (1 + s.shape[1] / 100) for s, t in zip(S, T))

    message = _fails_with(checks.check_cd_loss, weighted_by_channels, "matches none of the usual mistakes")
    assert "stages but wrong" not in message and "right" not in message.split("matches none")[0]


# ============================================================================ GKD: right


def gkd_indexing(student_logits, teacher_logits, targets, temperature=1.0):
    kept = teacher_logits.argmax(1) == targets
    if not kept.any():
        return student_logits.sum() * 0.0
    s, t = student_logits[kept] / temperature, teacher_logits[kept] / temperature
    return F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True) * temperature**2


def gkd_eps(student_logits, teacher_logits, targets, temperature=1.0):
    kept = (teacher_logits.argmax(1) == targets).float()
    log_s = F.log_softmax(student_logits / temperature, 1)
    p_t = F.softmax(teacher_logits / temperature, 1)
    kl = F.kl_div(log_s, p_t, reduction="none").sum(1)
    return (kl * kept).sum() / (kept.sum() + 1e-12) * temperature**2


@pytest.mark.parametrize("fn", [losses.gkd_loss, gkd_indexing, gkd_eps], ids=["cdlib", "indexing", "eps"])
def test_check_gkd_loss_passes_right_implementations(fn, capsys):
    _passes(checks.check_gkd_loss, fn, capsys)


def test_check_gkd_loss_passes_the_instructor_solution(capsys):
    _passes(checks.check_gkd_loss, _solution("exercise2_gkd_loss.ipynb", "my_gkd_loss"), capsys)


# ============================================================================ GKD: wrong


def _kl(s, t, T=1.0):
    log_s, log_t = F.log_softmax(s / T, 1), F.log_softmax(t / T, 1)
    return (log_t.exp() * (log_t - log_s)).sum(1)


def gkd_inverted_mask(s, t, y, temperature=1.0):
    kept = (t.argmax(1) != y).float()
    return (_kl(s, t, temperature) * kept).sum() / kept.sum().clamp_min(1) * temperature**2


def gkd_student_mask(s, t, y, temperature=1.0):
    kept = (s.argmax(1) == y).float()
    return (_kl(s, t, temperature) * kept).sum() / kept.sum().clamp_min(1) * temperature**2


def gkd_batch_mean(s, t, y, temperature=1.0):
    kept = (t.argmax(1) == y).float()
    return (_kl(s, t, temperature) * kept).mean() * temperature**2


def gkd_nan_when_none_kept(s, t, y, temperature=1.0):  # the reference code's behaviour
    kept = (t.argmax(1) == y).float()
    return (_kl(s, t, temperature) * kept).sum() / kept.sum() * temperature**2


def gkd_zero_division(s, t, y, temperature=1.0):
    kept = (t.argmax(1) == y).float()
    return (_kl(s, t, temperature) * kept).sum() * (1 / int(kept.sum())) * temperature**2


def gkd_where_nan_grad(s, t, y, temperature=1.0):
    kept = (t.argmax(1) == y).float()
    n = kept.sum()
    value = (_kl(s, t, temperature) * kept).sum() / n * temperature**2
    return torch.where(n > 0, value, torch.zeros_like(value))


def gkd_python_zero(s, t, y, temperature=1.0):
    kept = t.argmax(1) == y
    if not kept.any():
        return 0.0
    return _kl(s[kept], t[kept], temperature).mean() * temperature**2


def gkd_no_t2(s, t, y, temperature=1.0):
    kept = (t.argmax(1) == y).float()
    return (_kl(s, t, temperature) * kept).sum() / kept.sum().clamp_min(1)


def gkd_t_not_t2(s, t, y, temperature=1.0):
    return losses.gkd_loss(s, t, y, temperature) / temperature


def gkd_student_only_soft(s, t, y, temperature=1.0):
    kept = (t.argmax(1) == y).float()
    log_s, log_t = F.log_softmax(s / temperature, 1), F.log_softmax(t, 1)
    kl = (log_t.exp() * (log_t - log_s)).sum(1)
    return (kl * kept).sum() / kept.sum().clamp_min(1) * temperature**2


def gkd_plain_kd(s, t, y, temperature=1.0):
    return losses.kd_loss(s, t, temperature)


def gkd_reverse_kl(s, t, y, temperature=1.0):
    kept = (t.argmax(1) == y).float()
    kl = _kl(t, s, temperature)
    return (kl * kept).sum() / kept.sum().clamp_min(1) * temperature**2


def gkd_kl_div_mean(s, t, y, temperature=1.0):
    kept = t.argmax(1) == y
    if not kept.any():
        return s.sum() * 0
    return F.kl_div(F.log_softmax(s[kept] / temperature, 1), F.softmax(t[kept] / temperature, 1), reduction="mean") * temperature**2


def gkd_probs_to_kl_div(s, t, y, temperature=1.0):
    kept = t.argmax(1) == y
    if not kept.any():
        return s.sum() * 0
    return F.kl_div(F.softmax(s[kept] / temperature, 1), F.softmax(t[kept] / temperature, 1), reduction="batchmean") * temperature**2


def gkd_soft_cross_entropy(s, t, y, temperature=1.0):
    kept = (t.argmax(1) == y).float()
    ce = -(F.softmax(t / temperature, 1) * F.log_softmax(s / temperature, 1)).sum(1)
    return (ce * kept).sum() / kept.sum().clamp_min(1) * temperature**2


def gkd_unstable_log(s, t, y, temperature=1.0):
    kept = (t.argmax(1) == y).float()
    p_s, p_t = F.softmax(s / temperature, 1), F.softmax(t / temperature, 1)
    kl = (p_t * (torch.log(p_t) - torch.log(p_s))).sum(1)
    return (kl * kept).sum() / kept.sum().clamp_min(1) * temperature**2


def gkd_item(s, t, y, temperature=1.0):
    return losses.gkd_loss(s, t, y, temperature).detach().item()


def gkd_detached(s, t, y, temperature=1.0):
    return losses.gkd_loss(s.detach(), t, y, temperature)


def gkd_per_sample(s, t, y, temperature=1.0):
    kept = (t.argmax(1) == y).float()
    return _kl(s, t, temperature) * kept * temperature**2


def gkd_default_t4(s, t, y, temperature=4.0):
    return losses.gkd_loss(s, t, y, temperature)


def gkd_no_temperature_arg(s, t, y):
    return losses.gkd_loss(s, t, y)


GKD_WRONG = [
    (gkd_inverted_mask, "kept the samples where the teacher is WRONG"),
    (gkd_student_mask, "chose the samples by the STUDENT's prediction"),
    (gkd_batch_mean, "averaged over the whole batch instead of the kept samples"),
    (gkd_nan_when_none_kept, "NaN when no sample is kept"),
    (gkd_zero_division, "crashed when no sample is kept"),
    (gkd_where_nan_grad, "its gradient is NaN"),
    (gkd_python_zero, "returned a Python float (0.0) when no sample is kept"),
    (gkd_no_t2, "forgot the T^2 factor"),
    (gkd_t_not_t2, "multiplied by T instead of T^2"),
    (gkd_student_only_soft, "softened only the student's logits"),
    (gkd_plain_kd, "kept every sample: that is plain KD"),
    (gkd_reverse_kl, "computed KL(student || teacher)"),
    pytest.param(gkd_kl_div_mean, "also averaged over the classes", id="gkd_kl_div_mean",
                 marks=pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")),
    (gkd_probs_to_kl_div, "passed probabilities where F.kl_div expects LOG-probabilities"),
    (gkd_soft_cross_entropy, "cross-entropy with the teacher's soft labels"),
    (gkd_unstable_log, "numerically unstable"),
    (gkd_item, "returned a Python float"),
    (gkd_detached, "gradients don't flow"),
    (gkd_per_sample, "expected a single number"),
    (gkd_default_t4, "your default temperature is 4"),
    (gkd_no_temperature_arg, "must accept the keyword argument temperature="),
]


@pytest.mark.parametrize("fn, diagnosis", GKD_WRONG)
def test_check_gkd_loss_names_the_mistake(fn, diagnosis):
    _fails_with(checks.check_gkd_loss, fn, diagnosis)


def test_check_gkd_loss_reports_independent_mistakes_together():
    def no_t2_and_nan(s, t, y, temperature=1.0):
        kept = (t.argmax(1) == y).float()
        return (_kl(s, t, temperature) * kept).sum() / kept.sum()

    message = _fails_with(checks.check_gkd_loss, no_t2_and_nan, "forgot the T^2 factor", "NaN when no sample is kept")
    assert "2 problems" in message


def _assert_unambiguous(mistakes, inputs, right: float) -> None:
    """Every catalogued mistake differs from the right value and from every other mistake."""
    seen = {}
    for mistake in mistakes:
        v = float(mistake.wrong(*inputs))
        assert not math.isclose(v, right, rel_tol=1e-3), f"mistake equals the right loss: {mistake.name}"
        for other, (w, diagnosis) in seen.items():
            if diagnosis != mistake.diagnosis:
                assert not math.isclose(v, w, rel_tol=1e-3), f"ambiguous: {mistake.name} vs {other}"
        seen[mistake.name] = (v, mistake.diagnosis)


def _gkd_inputs(case):
    s, t, y = gkd_loss.make_inputs(case)
    return s, t, y, [s.detach().double(), t.double(), y, case.temperature]


def test_gkd_mistake_catalogue_is_unambiguous():
    for case, catalogue in ((gkd_loss.BASE, gkd_loss.MISTAKES), (gkd_loss.TEMPERATURE, gkd_loss.TEMPERATURE_MISTAKES)):
        s, t, y, inputs = _gkd_inputs(case)
        _assert_unambiguous(catalogue, inputs, float(losses.gkd_loss(s, t, y, case.temperature).detach()))


@pytest.mark.parametrize("mistake", gkd_loss.MISTAKES + gkd_loss.TEMPERATURE_MISTAKES, ids=lambda m: m.name)
def test_check_gkd_loss_names_each_catalogued_mistake(mistake):
    _fails_with(checks.check_gkd_loss, mistake.wrong, mistake.diagnosis)


def test_check_gkd_loss_reports_an_error_in_the_code_as_that_error():
    def gkd_typo(s, t, y, temperature=1.0):
        return losses.gkd_loss(s, t, targets, temperature)  # noqa: F821 - the typo under test

    _fails_with(checks.check_gkd_loss, gkd_typo, "raised NameError: name 'targets' is not defined", "fix the error first")


def test_exercises_are_reachable_by_name_as_data():
    for name, check in [("exercise1_cd_loss", checks.check_cd_loss), ("exercise2_gkd_loss", checks.check_gkd_loss),
                        ("exercise3_edt_schedule", checks.check_schedule)]:
        ex = exercises.exercise(name)
        assert ex.name == name and ex.check is check and ex.function.startswith("my_")
    assert exercises.exercise("exercise1_cd_loss").mistakes["value"] == cd_loss.MISTAKES
    assert all(isinstance(m, Mistake) for ms in exercises.exercise("exercise2_gkd_loss").mistakes.values() for m in ms)
    with pytest.raises(ConfigError, match="unknown exercise"):
        exercises.exercise("exercise9")


# ============================================================================ schedules: right

EPOCHS = 30


@pytest.mark.parametrize("name", ["paper-cifar100", "paper-imagenet", "cosine", "linear", "exponential"])
def test_check_schedule_passes_cdlib_edt_schedules(name, capsys):
    _passes(checks.check_schedule, schedules.get(name, epochs=EPOCHS), capsys, EPOCHS)


@pytest.mark.parametrize("epochs", [3, 30, 200])
def test_check_schedule_passes_the_instructor_solution(epochs, capsys):
    my_weights = _solution("exercise3_edt_schedule.ipynb", "my_weights")
    _passes(checks.check_schedule, functools.partial(my_weights, epochs=epochs), capsys, epochs)


def test_check_schedule_accepts_tensor_and_int_weights(capsys):
    def tensors(epoch):
        return {"ce": 1, "cd": torch.tensor(6.0 * 0.9 ** math.floor(epoch - 1)), "gkd": torch.tensor(0.1)}

    _passes(checks.check_schedule, tensors, capsys, 5)


# ============================================================================ schedules: wrong


def sched_increasing(epoch):
    return {"ce": 1.0, "cd": 6.0 * (1 + 0.1 * (epoch - 1)), "gkd": 0.1}


def sched_constant(epoch):
    return {"ce": 1.0, "cd": 6.0, "gkd": 0.1}


def sched_starts_at_one(epoch):
    return {"ce": 1.0, "cd": 1.0 / epoch, "gkd": 0.1}


def sched_zero_indexed(epoch):
    return {"ce": 1.0, "cd": 6.0 * 0.9 ** math.floor(epoch), "gkd": 0.1}


def sched_missing_key(epoch):
    return {"ce": 1.0, "cd": 6.0 * 0.9 ** (epoch - 1)}


def sched_typo_key(epoch):
    return {"ce": 1.0, "CD": 6.0 * 0.9 ** (epoch - 1), "gkd": 0.1}


def sched_negative(epoch):
    return {"ce": 1.0, "cd": 6.0 - 0.5 * (epoch - 1), "gkd": 0.1}


def sched_nan(epoch):
    return {"ce": 1.0, "cd": 6.0 * math.exp(-(epoch - 1) / 5), "gkd": 0.1 if epoch < 10 else float("nan")}


def sched_list_lookup(epoch, table=[6.0 * 0.9**k for k in range(100)]):  # noqa: B006
    return {"ce": 1.0, "cd": table[epoch - 1], "gkd": 0.1}


def sched_dict_lookup(epoch, table={e: 6.0 * 0.9 ** (e - 1) for e in range(1, 100)}):  # noqa: B006
    return {"ce": 1.0, "cd": table[epoch], "gkd": 0.1}


def sched_paper_milestones(epoch):  # the paper's 200-epoch milestones on a 30-epoch run
    return {"ce": 1.0, "cd": 6.0 * 0.9 ** sum(epoch >= m for m in (60, 160)), "gkd": 0.1}


def sched_no_labels_at_end(epoch):
    return {"ce": 0.0, "cd": 6.0 * 0.9 ** (epoch - 1), "gkd": 0.0}


def sched_returns_tuple(epoch):
    return (1.0, 6.0, 0.1)


def sched_string_weight(epoch):
    return {"ce": 1.0, "cd": "6", "gkd": 0.1}


SCHEDULE_WRONG = [
    (sched_increasing, "the CD weight increases"),
    (sched_constant, "never decays"),
    (sched_starts_at_one, "starts at 1 at epoch 1; the paper starts at lambda_CD = 6"),
    (sched_zero_indexed, "did you count epochs from 0"),
    (sched_missing_key, "no 'gkd' weight"),
    (sched_typo_key, "unknown key(s) 'CD'"),
    (sched_negative, "negative"),
    (sched_nan, "every weight must be a finite number"),
    (sched_list_lookup, "crashed at epoch 1 (TypeError"),
    (sched_dict_lookup, "crashed at the fractional epoch 1.25"),
    (sched_paper_milestones, "It does decay later"),
    (sched_no_labels_at_end, "cross-entropy weight is 0 at the last epoch"),
    (sched_returns_tuple, "it must return a dict"),
    (sched_string_weight, "not a number"),
]


@pytest.mark.parametrize("fn, diagnosis", SCHEDULE_WRONG)
def test_check_schedule_names_the_mistake(fn, diagnosis):
    _fails_with(checks.check_schedule, fn, diagnosis, epochs=EPOCHS)


# ---------------------------------------------------------------- schedules: honest hints


def test_check_schedule_names_a_lambda_your_schedule():
    message = _fails_with(checks.check_schedule, lambda epoch: sched_constant(epoch), "in your schedule", epochs=EPOCHS)
    assert "<lambda>" not in message
    assert "in sched_constant" in _fails_with(checks.check_schedule, functools.partial(sched_constant), "never decays",
                                              epochs=EPOCHS)


def test_check_schedule_says_when_a_late_decay_happens_and_names_the_paper_only_when_it_is_the_paper():
    def decays_after_the_run(epoch):  # decays from epochs + 2, not at a paper milestone
        return {"ce": 1.0, "cd": 6.0 * 0.9 ** max(0, math.floor(epoch) - EPOCHS - 1), "gkd": 0.1}

    message = _fails_with(checks.check_schedule, decays_after_the_run, "never decays",
                          f"first below 6 at epoch {EPOCHS + 2}", epochs=EPOCHS)
    assert "200" not in message and "paper" not in message.split("never decays")[1].replace("the paper's", "")
    _fails_with(checks.check_schedule, sched_paper_milestones, "at epoch 60",
                "the CIFAR-100 recipe's first milestone (of 200 epochs)", epochs=EPOCHS)


def my_weights_two_arguments(epoch, epochs):
    return {"ce": 1.0, "cd": 6.0 * 0.9 ** math.floor((epoch - 1) / epochs * 3), "gkd": 0.1}


def test_check_schedule_reports_a_signature_mismatch_as_such():
    message = _fails_with(checks.check_schedule, my_weights_two_arguments, "calls schedule(epoch) with one argument",
                          "(epoch, epochs)", "missing a required argument: 'epochs'", epochs=EPOCHS)
    assert "math.floor" not in message and "FLOAT" not in message


def test_check_schedule_reports_an_error_in_the_code_as_that_error():
    def typo(epoch):
        return {"ce": 1.0, "cd": 6.0 * 0.9 ** math.floor(epoch / EPOCH), "gkd": 0.1}  # noqa: F821 - the typo

    message = _fails_with(checks.check_schedule, typo, "raised NameError: name 'EPOCH' is not defined",
                          "fix the error first", "line ", epochs=EPOCHS)
    assert "Use math.floor" not in message and "FLOAT" not in message


def test_check_schedule_rejects_cdlib_constant():
    _fails_with(checks.check_schedule, schedules.get("constant", epochs=EPOCHS), "never decays", epochs=EPOCHS)


def test_check_schedule_needs_two_epochs():
    with pytest.raises(ValueError):
        checks.check_schedule(sched_constant, 1)


# ============================================================================ fingerprint and comparison


def test_schedule_fingerprint_changes_with_the_schedule():
    a = checks.schedule_fingerprint(schedules.get("cosine", epochs=10), 10)
    assert a == checks.schedule_fingerprint(schedules.get("cosine", epochs=10), 10)
    assert a != checks.schedule_fingerprint(schedules.get("linear", epochs=10), 10)
    assert a != checks.schedule_fingerprint(schedules.get("cosine", epochs=11), 11)
    assert len(a) == 8


def test_compare_schedules_reports_noise_honestly(capsys):
    out = checks.compare_schedules({"mine": [93.0, 92.5, 93.4], "constant": [92.8, 92.9, 93.1]}, n_test=899)
    text = capsys.readouterr().out
    assert out["mine"]["verdict"] == "within noise"
    assert "test-set noise" in text and "seed-to-seed noise" in text
    out = checks.compare_schedules({"mine": [99.0, 99.2], "constant": [90.0, 90.5]}, n_test=10_000, verbose=False)
    assert out["mine"]["verdict"] == "beats constant"
    out = checks.compare_schedules({"mine": [80.0], "constant": [90.0]}, n_test=10_000, verbose=False)
    assert out["mine"]["verdict"] == "is worse than constant"


def test_compare_schedules_one_seed_warns(capsys):
    checks.compare_schedules({"mine": [93.0], "constant": [92.0]}, n_test=899)
    assert "one seed" in capsys.readouterr().out


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    checks.check_cd_loss(losses.cd_loss, verbose=False)
    checks.check_gkd_loss(losses.gkd_loss, verbose=False)
    assert torch.equal(state, torch.get_rng_state())


# ============================================================================ exercise 4: KD


def kd_kl_div(s, t, T):
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T


def kd_log_target(s, t, T):
    return F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True) * T**2


def kd_entropy_minus(s, t, T):  # cross-entropy minus the teacher's entropy: the same KL, written differently
    p = F.softmax(t / T, 1)
    return ((-(p * F.log_softmax(s / T, 1)).sum(1) + (p * F.log_softmax(t / T, 1)).sum(1)).mean()) * T**2


def _independent_kd(s, t, T):
    """The KD loss written out in float64 from exp and log, for the tests only."""
    s, t = s.double() / T, t.double() / T
    log_ps = s - s.max(1, keepdim=True).values
    log_ps = log_ps - log_ps.exp().sum(1, keepdim=True).log()
    log_pt = t - t.max(1, keepdim=True).values
    log_pt = log_pt - log_pt.exp().sum(1, keepdim=True).log()
    return (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * T**2


@pytest.mark.parametrize("fn", [losses.kd_loss, kd_kl_div, kd_log_target, kd_entropy_minus, _independent_kd],
                         ids=lambda f: f.__name__)
def test_check_kd_loss_passes_right_implementations(fn, capsys):
    _passes(checks.check_kd_loss, fn, capsys)


def test_check_kd_loss_passes_the_instructor_solution(capsys):
    _passes(checks.check_kd_loss, _solution("exercise4_kd_loss.ipynb", "my_kd_loss"), capsys)


def test_kd_reference_agrees_with_an_independent_computation():
    for case in kd_loss.CASES + (kd_loss.LARGE,):
        s, t = kd_loss.make_inputs(case)
        want = float(_independent_kd(s.detach(), t, case.temperature))
        assert math.isclose(float(losses.kd_loss(s, t, case.temperature).detach()), want, rel_tol=1e-5), case.label


def test_kd_mistake_catalogue_is_unambiguous():
    """On the case mistakes are diagnosed on, no two catalogued mistakes agree, and none equals the right loss."""
    s, t = kd_loss.make_inputs(kd_loss.BASE)
    T = kd_loss.BASE.temperature
    right = float(_independent_kd(s.detach(), t, T))
    values = {}
    for mistake in kd_loss.MISTAKES:
        v = float(mistake.wrong(s.detach().double(), t.double(), T))
        assert not math.isclose(v, right, rel_tol=1e-2), f"{mistake.name} equals the right loss"
        for other, w in values.items():
            assert not math.isclose(v, w, rel_tol=1e-2), f"ambiguous: {mistake.name} vs {other}"
        values[mistake.name] = v


@pytest.mark.parametrize("mistake", kd_loss.MISTAKES, ids=lambda m: m.name)
def test_check_kd_loss_names_each_catalogued_mistake(mistake):
    _fails_with(checks.check_kd_loss, mistake.wrong, mistake.diagnosis)


def kd_no_t2(s, t, T):
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")


def kd_times_t(s, t, T):
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T


def kd_swapped(s, t, T):
    return F.kl_div(F.log_softmax(t / T, 1), F.softmax(s / T, 1), reduction="batchmean") * T**2


def kd_sum(s, t, T):
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="sum") * T**2


def kd_mean(s, t, T):
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="mean") * T**2


def kd_teacher_plain(s, t, T):
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t, 1), reduction="batchmean") * T**2


def kd_student_plain(s, t, T):
    return F.kl_div(F.log_softmax(s, 1), F.softmax(t / T, 1), reduction="batchmean") * T**2


def kd_softmax_input(s, t, T):
    return F.kl_div(F.softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T**2


def kd_log_target_forgotten(s, t, T):
    return F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean") * T**2


def kd_no_temperature(s, t, T):
    return F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")


def kd_log_of_softmax(s, t, T):
    p_t = F.softmax(t / T, 1)
    return (p_t * (torch.log(p_t) - torch.log(F.softmax(s / T, 1)))).sum(1).mean() * T**2


def kd_item(s, t, T):
    return kd_kl_div(s, t, T).item()


def kd_detached(s, t, T):
    return kd_kl_div(s.detach(), t, T) + 0 * s.sum()


def kd_typo(s, t, T):
    return kd_kl_div(s, t, temperature)  # noqa: F821 - the typo under test


KD_WRONG = [
    (kd_no_t2, "forgot the T^2 factor"),
    (kd_times_t, "multiplied by T instead of T^2"),
    (kd_swapped, "computed KL(student || teacher)"),
    (kd_sum, "summed over the batch where KD averages"),
    (kd_mean, "also averaged over the classes"),
    (kd_teacher_plain, "softened only the student's logits"),
    (kd_student_plain, "softened only the teacher's logits"),
    (kd_softmax_input, "passed the student's PROBABILITIES"),
    (kd_log_target_forgotten, "log_target=True"),
    (kd_no_temperature, "ignored the temperature"),
    (kd_log_of_softmax, "numerically unstable"),
    (kd_item, "not a tensor"),
    (kd_detached, "the gradient with respect to the student's logits is not"),
    (kd_typo, "raised NameError: name 'temperature' is not defined"),
]


@pytest.mark.parametrize("fn, diagnosis", KD_WRONG, ids=[f.__name__ for f, _ in KD_WRONG])
def test_check_kd_loss_names_the_mistake(fn, diagnosis):
    assert fn.__name__ in _fails_with(checks.check_kd_loss, fn, diagnosis)


def test_check_kd_loss_says_which_temperature_it_got_wrong():
    def kd_wrong_at_fractional(s, t, T):  # right for whole temperatures only
        return kd_kl_div(s, t, T) * (1.0 if float(T).is_integer() else 1.3)

    _fails_with(checks.check_kd_loss, kd_wrong_at_fractional, "right at T=1, 2, 4 but wrong at T=2.5")


# ============================================================================ exercise 5: channel attention


def ca_pool(x):
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def ca_view(x):
    return x.reshape(x.shape[0], x.shape[1], -1).sum(-1) / (x.shape[2] * x.shape[3])


@pytest.mark.parametrize("fn", [losses.channel_attention, ca_pool, ca_view], ids=lambda f: f.__name__)
def test_check_channel_attention_passes_right_implementations(fn, capsys):
    _passes(checks.check_channel_attention, fn, capsys)


def test_check_channel_attention_passes_the_instructor_solution(capsys):
    fn = _solution("exercise5_connector.ipynb", "my_channel_attention")
    _passes(checks.check_channel_attention, fn, capsys)


@pytest.mark.parametrize("mistake", connector.ATTENTION_MISTAKES, ids=lambda m: m.name)
def test_check_channel_attention_names_each_catalogued_mistake(mistake):
    _fails_with(checks.check_channel_attention, mistake.wrong, mistake.diagnosis)


def test_attention_mistake_catalogue_is_unambiguous():
    x = connector.make_map(connector.ATTENTION_CASES[0]).detach().double()
    right = x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])
    outs = {m.name: m.wrong(x) for m in connector.ATTENTION_MISTAKES}
    for name, out in outs.items():
        assert out.shape != right.shape or not torch.allclose(out, right, rtol=1e-3), name
        for other, o in outs.items():
            if other != name:
                assert out.shape != o.shape or not torch.allclose(out, o, rtol=1e-3), f"{name} vs {other}"


def ca_squeezed(x):
    return x.mean(dim=(2, 3)).squeeze()


def ca_max_pool2d(x):
    return F.adaptive_max_pool2d(x, 1).flatten(1)


def ca_numpy(x):
    return torch.tensor(x.detach().numpy().mean(axis=(2, 3)))


def ca_in_place(x):
    return x.relu_().mean(dim=(2, 3))


@pytest.mark.parametrize("fn, diagnosis", [
    (ca_squeezed, "right numbers in the wrong shape"),
    (ca_max_pool2d, "used max instead of mean pooling"),
    (ca_numpy, "gradients don't flow"),
    (ca_in_place, "raised RuntimeError"),
    (lambda x: x.mean(dim=(2, 3)).tolist(), "return a torch tensor"),
], ids=["squeezed", "max_pool2d", "numpy", "in_place", "tolist"])
def test_check_channel_attention_names_the_mistake(fn, diagnosis):
    _fails_with(checks.check_channel_attention, fn, diagnosis)


def test_check_channel_attention_reports_in_place_changes_to_the_input():
    def ca_zeroing(x):
        out = x.mean(dim=(2, 3))
        x.data.zero_()
        return out

    _fails_with(checks.check_channel_attention, ca_zeroing, "modified the feature map in place")


# ============================================================================ exercise 5: the connector


def test_check_connector_passes_cdlib_and_the_instructor_solution(capsys):
    _passes(checks.check_connector, Connector, capsys)
    _passes(checks.check_connector, _solution("exercise5_connector.ipynb", "MyConnector"), capsys)


class ConnectorModule(nn.Module):  # the same thing written as a plain Module with a forward
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def test_check_connector_passes_a_module_with_its_own_forward(capsys):
    _passes(checks.check_connector, ConnectorModule, capsys)


def _wrong_connector(mistake):
    class Wrong(nn.Module):
        def __init__(self, in_channels, out_channels):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

        def forward(self, x):
            return mistake.wrong(x, self.conv.weight)

    Wrong.__name__ = mistake.name
    return Wrong


@pytest.mark.parametrize("mistake", connector.CONNECTOR_MISTAKES, ids=lambda m: m.name)
def test_check_connector_names_each_catalogued_mistake(mistake):
    _fails_with(checks.check_connector, _wrong_connector(mistake), mistake.diagnosis)


def _sequential(*layers):
    class Made(nn.Sequential):
        def __init__(self, i, o):
            super().__init__(*(layer(i, o) for layer in layers))

    return Made


conv = lambda i, o: nn.Conv2d(i, o, 1, bias=False)  # noqa: E731
bn_out = lambda i, o: nn.BatchNorm2d(o)  # noqa: E731
bn_in = lambda i, o: nn.BatchNorm2d(i)  # noqa: E731
relu = lambda i, o: nn.ReLU()  # noqa: E731


@pytest.mark.parametrize("cls, diagnosis", [
    (_sequential(lambda i, o: nn.Conv2d(i, o, 1), bn_out, relu), "its convolution has a bias"),
    (_sequential(lambda i, o: nn.Conv2d(i, o, 3, padding=1, bias=False), bn_out, relu), "kernel_size=(3, 3)"),
    (_sequential(lambda i, o: nn.Conv2d(o, i, 1, bias=False), bn_out, relu), "its convolution maps"),
    (_sequential(conv, relu), "left out the BatchNorm"),
    (_sequential(conv, bn_out), "left out the ReLU"),
    (_sequential(conv), "left out both BatchNorm and ReLU"),
    (_sequential(conv, relu, bn_out), "wrong order (ReLU before BatchNorm)"),
    (_sequential(relu, conv, bn_out), "wrong order (ReLU on the input, before the conv)"),
    (_sequential(bn_in, conv, relu), "wrong order (BatchNorm on the input, before the conv)"),
    (_sequential(lambda i, o: nn.Identity()), "has no nn.Conv2d"),
    (_sequential(conv, bn_out, relu, conv), "has 2 convolutions"),
    (_sequential(conv, bn_out, lambda i, o: nn.Sigmoid()), "matches none of the usual mistakes"),
    (lambda i, o: (lambda x: x), "not a torch.nn.Module"),
    (lambda i: Connector(i, i), "building it with in_channels=3, out_channels=5"),
], ids=["bias", "3x3", "swapped_channels", "no_bn", "no_relu", "conv_only", "relu_bn", "relu_first", "bn_first",
        "no_conv", "two_convs", "sigmoid", "not_module", "signature"])
def test_check_connector_names_the_mistake(cls, diagnosis):
    _fails_with(checks.check_connector, cls, diagnosis)


def test_check_connector_reports_an_in_place_relu_on_the_input():
    class InPlaceFirst(nn.Module):
        def __init__(self, i, o):
            super().__init__()
            self.body = Connector(i, o)

        def forward(self, x):
            x.data.mul_(2.0)  # changes the student's feature map under the caller's feet
            return self.body(x)

    _fails_with(checks.check_connector, InPlaceFirst, "modified its input in place")


# ============================================================================ wiring


def test_exercises_4_and_5_are_reachable_by_name_as_data():
    ex4, ex5 = exercises.exercise("exercise4_kd_loss"), exercises.exercise("exercise5_connector")
    assert ex4.check is checks.check_kd_loss and ex4.function == "my_kd_loss"
    assert ex4.mistakes["value at T=4"] == kd_loss.MISTAKES
    assert ex5.check is checks.check_channel_attention and ex5.function == "my_channel_attention"
    assert ex5.mistakes["attention"] == connector.ATTENTION_MISTAKES
    assert ex5.mistakes["connector output"] == connector.CONNECTOR_MISTAKES


def test_student_placeholders_raise_and_the_checks_say_not_implemented():
    fn = _defined("exercises/student", "exercise4_kd_loss.ipynb", "my_kd_loss", "def my_kd_loss(")
    with pytest.raises(checks.CheckFailed, match="not implemented yet"):
        checks.check_kd_loss(fn)
    fn = _defined("exercises/student", "exercise5_connector.ipynb", "my_channel_attention", "def my_channel_attention(")
    with pytest.raises(checks.CheckFailed, match="not implemented yet"):
        checks.check_channel_attention(fn)
    cls = _defined("exercises/student", "exercise5_connector.ipynb", "MyConnector", "class MyConnector(")
    with pytest.raises(checks.CheckFailed, match="not implemented yet"):
        checks.check_connector(cls)


def test_new_checks_leave_the_global_rng_alone():
    torch.manual_seed(7)
    state = torch.get_rng_state()
    checks.check_kd_loss(losses.kd_loss, verbose=False)
    checks.check_channel_attention(losses.channel_attention, verbose=False)
    checks.check_connector(Connector, verbose=False)
    assert torch.equal(state, torch.get_rng_state())
