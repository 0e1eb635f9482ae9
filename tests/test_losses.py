"""cdlib.losses and cdlib.connectors against hand-computed numbers and plain python loops.

Every expected value below is computed independently of cdlib: by hand (in the
comments) or with explicit python loops over stages / samples / channels on
python floats (double precision).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from cdlib import connectors, losses

# --------------------------------------------------------------------------- independent references


def _flat(t: torch.Tensor) -> list:
    return t.detach().double().flatten().tolist()


def cd_reference(student_feats, teacher_feats) -> float:
    """Sum over stages of mean over (sample, channel) of (spatial mean S - spatial mean T)^2."""
    total = 0.0
    for s, t in zip(student_feats, teacher_feats):
        n_samples, n_channels = s.shape[:2]
        stage = 0.0
        for n in range(n_samples):
            for c in range(n_channels):
                s_values, t_values = _flat(s[n, c]), _flat(t[n, c])
                w_s = sum(s_values) / len(s_values)
                w_t = sum(t_values) / len(t_values)
                stage += (w_s - w_t) ** 2
        total += stage / (n_samples * n_channels)
    return total


def _log_softmax(row: list, temperature: float) -> list:
    z = [x / temperature for x in row]
    m = max(z)
    log_norm = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - log_norm for v in z]


def kl_reference(student_row: list, teacher_row: list, temperature: float) -> float:
    """sum_c p_t (log p_t - log p_s) for one sample."""
    log_ps = _log_softmax(student_row, temperature)
    log_pt = _log_softmax(teacher_row, temperature)
    return sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps))


def kd_reference(student, teacher, temperature: float) -> float:
    s_rows, t_rows = student.detach().double().tolist(), teacher.detach().double().tolist()
    kls = [kl_reference(s, t, temperature) for s, t in zip(s_rows, t_rows)]
    return temperature**2 * sum(kls) / len(kls)


def gkd_reference(student, teacher, targets, temperature: float) -> float:
    s_rows, t_rows = student.detach().double().tolist(), teacher.detach().double().tolist()
    kept = []
    for s, t, y in zip(s_rows, t_rows, targets.tolist()):
        if max(range(len(t)), key=lambda c: t[c]) == y:  # teacher's argmax is the label
            kept.append(kl_reference(s, t, temperature))
    if not kept:
        return 0.0
    return temperature**2 * sum(kept) / len(kept)


def at_reference(student_feats, teacher_feats, p: float = 2.0) -> float:
    """Per stage: mean over (sample, position) of squared diff of L2-normalised mean_c |F|^p maps."""

    def attention(f, n):
        n_channels, height, width = f.shape[1:]
        am = []
        for y in range(height):
            for x in range(width):
                am.append(sum(abs(float(f[n, c, y, x])) ** p for c in range(n_channels)) / n_channels)
        norm = math.sqrt(sum(v * v for v in am))
        return [v / max(norm, 1e-12) for v in am]

    total = 0.0
    for s, t in zip(student_feats, teacher_feats):
        s, t = s.detach().double(), t.detach().double()
        n_samples, _, height, width = s.shape
        stage = 0.0
        for n in range(n_samples):
            stage += sum((a - b) ** 2 for a, b in zip(attention(s, n), attention(t, n)))
        total += stage / (n_samples * height * width)
    return total


def fitnets_reference(student_hints, teacher_hints) -> float:
    total = 0.0
    for s, t in zip(student_hints, teacher_hints):
        a, b = _flat(s), _flat(t)
        total += sum((x - y) ** 2 for x, y in zip(a, b)) / len(a)
    return total


# --------------------------------------------------------------------------- random inputs


def _stage_pair(shapes_s, shapes_t, dtype=torch.float64, device="cpu"):
    student = [torch.randn(*shape, dtype=dtype, device=device) for shape in shapes_s]
    teacher = [torch.randn(*shape, dtype=dtype, device=device) for shape in shapes_t]
    return student, teacher


STUDENT_SHAPES = [(3, 4, 8, 8), (3, 6, 4, 4)]
TEACHER_SHAPES = [(3, 4, 5, 7), (3, 6, 2, 3)]  # spatial sizes differ from the student's


# --------------------------------------------------------------------------- channel attention / CD


def test_channel_attention_is_spatial_mean():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 8.0]]]])  # (1, 2, 2, 2)
    # channel 0: (1+2+3+4)/4 = 2.5 ; channel 1: 8/4 = 2.0
    assert losses.channel_attention(f).tolist() == [[2.5, 2.0]]


def test_channel_attention_rejects_non_4d():
    with pytest.raises(ValueError, match="4-D"):
        losses.channel_attention(torch.zeros(2, 3, 4))


def test_cd_loss_hand_example():
    # Two stages, N = 2, C = 2; student and teacher spatial sizes differ on purpose.
    # Stage 1 -- student (2, 2, 2, 2), teacher (2, 2, 1, 1):
    #   sample 0: student means ch0 (1+2+3+4)/4 = 2.5, ch1 (0+0+0+4)/4 = 1.0; teacher 0.5, 3.0
    #             diffs 2.0, -2.0 -> squares 4, 4
    #   sample 1: student means ch0 1.0, ch1 2.0; teacher 1.0, 1.0 -> diffs 0, 1 -> squares 0, 1
    #   stage 1 = (4 + 4 + 0 + 1) / 4 = 2.25
    s1 = torch.tensor(
        [
            [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 4.0]]],
            [[[1.0, 1.0], [1.0, 1.0]], [[2.0, 2.0], [2.0, 2.0]]],
        ]
    )
    t1 = torch.tensor([[[[0.5]], [[3.0]]], [[[1.0]], [[1.0]]]])
    # Stage 2 -- student (2, 2, 1, 1), teacher (2, 2, 2, 2):
    #   sample 0: student 3, 0; teacher means (2+2+2+2)/4 = 2, (1-1+0+0)/4 = 0 -> diffs 1, 0 -> 1, 0
    #   sample 1: student 0, 0; teacher means (0+0+0+2)/4 = 0.5, (4+0+0+0)/4 = 1 -> diffs -0.5, -1 -> 0.25, 1
    #   stage 2 = (1 + 0 + 0.25 + 1) / 4 = 0.5625
    s2 = torch.tensor([[[[3.0]], [[0.0]]], [[[0.0]], [[0.0]]]])
    t2 = torch.tensor(
        [
            [[[2.0, 2.0], [2.0, 2.0]], [[1.0, -1.0], [0.0, 0.0]]],
            [[[0.0, 0.0], [0.0, 2.0]], [[4.0, 0.0], [0.0, 0.0]]],
        ]
    )
    # total = 2.25 + 0.5625 = 2.8125 (exact in binary floating point)
    assert losses.cd_loss([s1, s2], [t1, t2]).item() == 2.8125
    # Each stage alone gives its own term.
    assert losses.cd_loss([s1], [t1]).item() == 2.25
    assert losses.cd_loss([s2], [t2]).item() == 0.5625


def test_cd_loss_matches_loop_on_random_data():
    student, teacher = _stage_pair(STUDENT_SHAPES, TEACHER_SHAPES)
    got = losses.cd_loss(student, teacher)
    assert got.dim() == 0
    assert got.item() == pytest.approx(cd_reference(student, teacher), rel=1e-12)


def test_cd_loss_four_stages_resnet_like():
    shapes_s = [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    shapes_t = [(2, 8, 8, 8), (2, 16, 4, 4), (2, 32, 2, 2), (2, 64, 1, 1)]
    student, teacher = _stage_pair(shapes_s, shapes_t)
    assert losses.cd_loss(student, teacher).item() == pytest.approx(cd_reference(student, teacher), rel=1e-12)


def test_cd_loss_errors():
    a = [torch.zeros(2, 4, 3, 3)]
    with pytest.raises(ValueError, match="channel|connector"):
        losses.cd_loss(a, [torch.zeros(2, 5, 3, 3)])  # channel mismatch
    with pytest.raises(ValueError, match="stages"):
        losses.cd_loss(a, a + a)  # stage count mismatch
    with pytest.raises(ValueError):
        losses.cd_loss([], [])
    with pytest.raises(ValueError):
        losses.cd_loss(a, [torch.zeros(3, 4, 3, 3)])  # batch mismatch


# --------------------------------------------------------------------------- KD


def test_kd_loss_hand_example():
    # Two classes. Student logits (0, 0) -> p_s = (1/2, 1/2).
    # Teacher logits (T ln 3, 0) -> at temperature T, p_t = (3/4, 1/4).
    # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.75 * 0.4054651 - 0.25 * 0.6931472 = 0.1308120
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kl == pytest.approx(0.1308120, abs=1e-7)
    for temperature in (1.0, 2.0, 4.0):
        student = torch.zeros(1, 2, dtype=torch.float64)
        teacher = torch.tensor([[temperature * math.log(3.0), 0.0]], dtype=torch.float64)
        got = losses.kd_loss(student, teacher, temperature=temperature).item()
        assert got == pytest.approx(temperature**2 * kl, rel=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0, 10.0])
def test_kd_loss_matches_loop(temperature):
    student = 3 * torch.randn(5, 7, dtype=torch.float64)
    teacher = 3 * torch.randn(5, 7, dtype=torch.float64)
    got = losses.kd_loss(student, teacher, temperature=temperature).item()
    assert got == pytest.approx(kd_reference(student, teacher, temperature), rel=1e-10)


def test_kd_loss_zero_for_identical_logits():
    logits = torch.randn(6, 10)
    for temperature in (1.0, 4.0):
        assert losses.kd_loss(logits, logits.clone(), temperature=temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_errors():
    with pytest.raises(ValueError):
        losses.kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        losses.kd_loss(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        losses.kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0)


# --------------------------------------------------------------------------- GKD


def test_teacher_correct_mask_hand_example():
    teacher = torch.tensor([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    targets = torch.tensor([1, 1, 2])  # argmaxes are 1, 0, 2
    assert losses.teacher_correct_mask(teacher, targets).tolist() == [True, False, True]


def test_gkd_loss_hand_example():
    # Sample 0: teacher (ln 3, 0) -> argmax 0 == label 0, kept; student (0, 0): KL = 0.1308120 (see KD example).
    # Sample 1: teacher argmax 1 != label 0, dropped whatever the student says.
    # GKD = KL_0 / 1 kept sample (T = 1).
    student = torch.tensor([[0.0, 0.0], [5.0, -5.0]], dtype=torch.float64)
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 1.0]], dtype=torch.float64)
    targets = torch.tensor([0, 0])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert losses.gkd_loss(student, teacher, targets).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_gkd_loss_matches_loop_over_kept_samples(temperature):
    student = 2 * torch.randn(12, 5, dtype=torch.float64)
    teacher = 2 * torch.randn(12, 5, dtype=torch.float64)
    targets = teacher.argmax(dim=1).clone()
    targets[::3] = (targets[::3] + 1) % 5  # teacher wrong on samples 0, 3, 6, 9
    kept = losses.teacher_correct_mask(teacher, targets)
    assert kept.sum().item() == 8
    got = losses.gkd_loss(student, teacher, targets, temperature=temperature).item()
    assert got == pytest.approx(gkd_reference(student, teacher, targets, temperature), rel=1e-10)


def test_gkd_all_wrong_is_zero_with_finite_zero_gradients():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.tensor([[5.0, 0.0, 0.0]] * 4)
    targets = torch.tensor([1, 2, 1, 2])  # the teacher says class 0 every time: all wrong
    # The reference implementation divides the summed KL by 0 kept samples here -> NaN.
    loss = losses.gkd_loss(student, teacher, targets)
    assert loss.item() == 0.0
    loss.backward()
    assert student.grad is not None
    assert torch.isfinite(student.grad).all()
    assert torch.equal(student.grad, torch.zeros_like(student.grad))


def test_gkd_all_wrong_does_not_poison_a_weighted_sum():
    # The reference defect: NaN * 0 = NaN even when the GKD weight is 0.
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.tensor([[5.0, 0.0, 0.0]] * 4)
    targets = torch.tensor([1, 2, 1, 2])
    total = torch.nn.functional.cross_entropy(student, targets) + 0.0 * losses.gkd_loss(student, teacher, targets)
    total.backward()
    assert torch.isfinite(total)
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_gkd_equals_kd_when_teacher_always_right(temperature):
    student = torch.randn(8, 6, dtype=torch.float64)
    teacher = torch.randn(8, 6, dtype=torch.float64)
    targets = teacher.argmax(dim=1)
    gkd = losses.gkd_loss(student, teacher, targets, temperature=temperature).item()
    kd = losses.kd_loss(student, teacher, temperature=temperature).item()
    assert gkd == pytest.approx(kd, rel=1e-12)
    assert gkd == pytest.approx(kd_reference(student, teacher, temperature), rel=1e-10)


def test_gkd_loss_errors():
    with pytest.raises(ValueError, match="targets"):
        losses.gkd_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        losses.gkd_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))


# --------------------------------------------------------------------------- AT and FitNets


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_at_loss_matches_loop(p):
    # Channel counts differ (attention averages channels away); spatial sizes match per stage.
    student = [torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 5, 2, 3, dtype=torch.float64)]
    teacher = [torch.randn(2, 6, 4, 4, dtype=torch.float64), torch.randn(2, 4, 2, 3, dtype=torch.float64)]
    got = losses.at_loss(student, teacher, p=p).item()
    assert got == pytest.approx(at_reference(student, teacher, p), rel=1e-10)


def test_at_loss_hand_example():
    # N = 1, one channel, 1x2 positions, p = 2.
    # Student F = (1, 0) -> |F|^2 = (1, 0) -> normalised (1, 0); teacher F = (0, 2) -> (0, 4) -> (0, 1).
    # diff (1, -1) -> squares (1, 1) -> mean over 1 sample x 2 positions = 1.0
    s = torch.tensor([[[[1.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 2.0]]]])
    assert losses.at_loss([s], [t]).item() == pytest.approx(1.0, abs=1e-7)
    # Identical direction, different scale: normalisation removes scale -> 0.
    assert losses.at_loss([s], [3 * s]).item() == pytest.approx(0.0, abs=1e-7)


def test_at_loss_errors():
    with pytest.raises(ValueError):
        losses.at_loss([torch.zeros(2, 3, 4, 4)], [torch.zeros(2, 3, 2, 2)])  # spatial mismatch
    with pytest.raises(ValueError):
        losses.at_loss([torch.zeros(2, 3, 4, 4)], [])


def test_fitnets_loss_matches_loop():
    student = [torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 5, 2, 2, dtype=torch.float64)]
    teacher = [torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 5, 2, 2, dtype=torch.float64)]
    got = losses.fitnets_loss(student, teacher).item()
    assert got == pytest.approx(fitnets_reference(student, teacher), rel=1e-12)


def test_fitnets_loss_hand_example():
    # diffs (1, -1, 2, 0) -> squares (1, 1, 4, 0) -> mean 1.5
    s = torch.tensor([[[[1.0, 0.0], [2.0, 5.0]]]])
    t = torch.tensor([[[[0.0, 1.0], [0.0, 5.0]]]])
    assert losses.fitnets_loss([s], [t]).item() == 1.5


def test_fitnets_loss_errors():
    with pytest.raises(ValueError, match="connector"):
        losses.fitnets_loss([torch.zeros(2, 3, 4, 4)], [torch.zeros(2, 4, 4, 4)])
    with pytest.raises(ValueError):
        losses.fitnets_loss([], [])


# --------------------------------------------------------------------------- gradients


def _all_losses(dtype, device, requires_grad):
    """(name, callable, list of input tensors) for every loss, on fresh random inputs."""
    kw = dict(dtype=dtype, device=device, requires_grad=requires_grad)
    cd_s = [torch.randn(2, 3, 4, 4, **kw), torch.randn(2, 4, 2, 2, **kw)]
    cd_t = [torch.randn(2, 3, 3, 3, **kw), torch.randn(2, 4, 1, 2, **kw)]
    at_t = [torch.randn(2, 5, 4, 4, **kw), torch.randn(2, 2, 2, 2, **kw)]
    fit_t = [torch.randn(2, 3, 4, 4, **kw), torch.randn(2, 4, 2, 2, **kw)]
    s_logits, t_logits = torch.randn(4, 5, **kw), torch.randn(4, 5, **kw)
    targets = t_logits.detach().argmax(dim=1)
    targets[0] = (targets[0] + 1) % 5  # one wrong sample so the mask matters
    return [
        ("cd", lambda: losses.cd_loss(cd_s, cd_t), cd_s + cd_t),
        ("kd", lambda: losses.kd_loss(s_logits, t_logits, temperature=4.0), [s_logits, t_logits]),
        ("gkd", lambda: losses.gkd_loss(s_logits, t_logits, targets, temperature=2.0), [s_logits, t_logits]),
        ("at", lambda: losses.at_loss(cd_s, at_t), cd_s + at_t),
        ("fitnets", lambda: losses.fitnets_loss(cd_s, fit_t), cd_s + fit_t),
    ]


def test_gradients_flow_to_every_input():
    for name, fn, inputs in _all_losses(torch.float32, "cpu", requires_grad=True):
        fn().backward()
        for x in inputs:
            assert x.grad is not None, name
            assert torch.isfinite(x.grad).all(), name
            assert x.grad.abs().sum() > 0, name


def test_gradients_match_finite_differences():
    # torch.autograd.gradcheck compares analytic gradients to numerical ones in float64.
    for name, fn, inputs in _all_losses(torch.float64, "cpu", requires_grad=True):
        assert torch.autograd.gradcheck(lambda *xs, fn=fn: fn(), inputs, eps=1e-6, atol=1e-5), name


# --------------------------------------------------------------------------- dtype and device


@pytest.mark.parametrize(
    "in_dtype, out_dtype",
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
    ],
)
def test_result_dtype_and_device_follow_inputs(in_dtype, out_dtype, device):
    for name, fn, _inputs in _all_losses(in_dtype, device, requires_grad=False):
        out = fn()
        assert out.dtype == out_dtype, name
        assert out.device.type == device.type, name
        assert out.dim() == 0, name
        assert torch.isfinite(out), name


def test_low_precision_values_match_double_loops():
    # bfloat16 / float16 inputs are exact in double; the float32 computation must match the loop.
    for dtype in (torch.float16, torch.bfloat16):
        s = [torch.randn(2, 3, 4, 4).to(dtype)]
        t = [torch.randn(2, 3, 2, 2).to(dtype)]
        assert losses.cd_loss(s, t).item() == pytest.approx(cd_reference(s, t), rel=1e-5)
        sl, tl = torch.randn(3, 6).to(dtype), torch.randn(3, 6).to(dtype)
        assert losses.kd_loss(sl, tl, 2.0).item() == pytest.approx(kd_reference(sl, tl, 2.0), rel=1e-5)


def test_float16_large_logits_are_finite_and_match_float32():
    # Logits spread over ~1e4: softmax in float16 would overflow exp / underflow to 0 -> inf or NaN.
    g = torch.Generator().manual_seed(1)
    student = (torch.randn(6, 10, generator=g) * 1e4).clamp(-6e4, 6e4).half()
    teacher = (torch.randn(6, 10, generator=g) * 1e4).clamp(-6e4, 6e4).half()
    targets = teacher.float().argmax(dim=1)
    targets[:2] = (targets[:2] + 1) % 10
    for temperature in (1.0, 4.0):
        kd = losses.kd_loss(student, teacher, temperature)
        assert kd.dtype == torch.float32 and torch.isfinite(kd)
        assert kd.item() == pytest.approx(kd_reference(student, teacher, temperature), rel=1e-4)
        gkd = losses.gkd_loss(student, teacher, targets, temperature)
        assert torch.isfinite(gkd)
        assert gkd.item() == pytest.approx(gkd_reference(student, teacher, targets, temperature), rel=1e-4)


def test_float16_large_features_are_finite_and_match_float32():
    # Channel means ~500 vs ~100: squared differences ~1.6e5 > 65504 (float16 max), and a
    # 16x16 sum of ~500s (128000) would overflow a float16 accumulator too.
    student = [(500 + 10 * torch.randn(2, 3, 16, 16)).half(), (400 + torch.randn(2, 2, 8, 8)).half()]
    teacher = [(100 + 10 * torch.randn(2, 3, 8, 8)).half(), (-300 + torch.randn(2, 2, 4, 4)).half()]
    cd = losses.cd_loss(student, teacher)
    assert cd.dtype == torch.float32 and torch.isfinite(cd)
    assert cd.item() == pytest.approx(cd_reference(student, teacher), rel=1e-5)
    assert cd.item() > 65504  # the result itself would not fit float16

    # AT: |F|^2 ~ 9e4 > 65504 per element.
    at_s = [(300 + torch.randn(1, 2, 3, 3)).half()]
    at_t = [(300 * torch.rand(1, 4, 3, 3)).half()]
    at = losses.at_loss(at_s, at_t)
    assert torch.isfinite(at)
    assert at.item() == pytest.approx(at_reference(at_s, at_t), rel=1e-4)

    # FitNets: differences ~400 -> squares ~1.6e5.
    fit_s = [(200 + torch.randn(2, 2, 3, 3)).half()]
    fit_t = [(-200 + torch.randn(2, 2, 3, 3)).half()]
    fit = losses.fitnets_loss(fit_s, fit_t)
    assert torch.isfinite(fit)
    assert fit.item() == pytest.approx(fitnets_reference(fit_s, fit_t), rel=1e-5)


# --------------------------------------------------------------------------- properties (hypothesis)

_floats = st.floats(min_value=-50, max_value=50, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def feature_lists(draw):
    n_stages = draw(st.integers(1, 3))
    n = draw(st.integers(1, 3))
    feats = []
    for _ in range(n_stages):
        shape = (n, draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        feats.append(torch.from_numpy(draw(arrays("float64", shape, elements=_floats))))
    return feats


@st.composite
def logit_pairs(draw):
    n, c = draw(st.integers(1, 5)), draw(st.integers(2, 6))
    s = torch.from_numpy(draw(arrays("float64", (n, c), elements=_floats)))
    t = torch.from_numpy(draw(arrays("float64", (n, c), elements=_floats)))
    return s, t


_settings = settings(max_examples=30, deadline=None)


@_settings
@given(feature_lists())
def test_property_cd_zero_for_identical_features(feats):
    assert losses.cd_loss(feats, [f.clone() for f in feats]).item() == 0.0


@_settings
@given(feature_lists(), st.data())
def test_property_cd_non_negative(student, data):
    teacher = [
        torch.from_numpy(data.draw(arrays("float64", (s.shape[0], s.shape[1], 2, 3), elements=_floats)))
        for s in student
    ]
    value = losses.cd_loss(student, teacher).item()
    assert value >= 0.0
    assert value == pytest.approx(cd_reference(student, teacher), rel=1e-9, abs=1e-12)


@_settings
@given(logit_pairs(), st.sampled_from([1.0, 2.0, 4.0]))
def test_property_gkd_equals_kd_when_teacher_right(pair, temperature):
    s, t = pair
    targets = t.argmax(dim=1)
    gkd = losses.gkd_loss(s, t, targets, temperature=temperature).item()
    kd = losses.kd_loss(s, t, temperature=temperature).item()
    assert gkd == pytest.approx(kd, rel=1e-12, abs=1e-12)


@_settings
@given(logit_pairs(), st.sampled_from([0.5, 1.0, 4.0]))
def test_property_kd_non_negative(pair, temperature):
    s, t = pair
    # KL divergence is >= 0; allow only float64 round-off below zero.
    assert losses.kd_loss(s, t, temperature=temperature).item() >= -1e-12


# --------------------------------------------------------------------------- connectors


def test_connector_structure():
    conn = connectors.Connector(8, 16)
    layers = list(conn.children())
    assert [type(m) for m in layers] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    conv, bn, _ = layers
    assert conv.kernel_size == (1, 1) and conv.stride == (1, 1)
    assert conv.bias is None
    assert (conv.in_channels, conv.out_channels) == (8, 16)
    assert bn.num_features == 16
    assert (conn.in_channels, conn.out_channels) == (8, 16)


def test_connector_forward_shape_and_relu():
    conn = connectors.Connector(3, 5)
    out = conn(torch.randn(2, 3, 7, 6))
    assert out.shape == (2, 5, 7, 6)
    assert (out >= 0).all()
    # Train-mode BatchNorm normalises each channel to mean 0 before the ReLU, so some outputs are 0.
    assert (out == 0).any()


def test_connector_is_pointwise():
    # A 1x1 convolution + eval BatchNorm acts on each pixel independently.
    conn = connectors.Connector(3, 4).eval()
    x = torch.randn(1, 3, 4, 4)
    y = conn(x)
    y_pixel = conn(x[:, :, 2:3, 1:2])
    torch.testing.assert_close(y[:, :, 2:3, 1:2], y_pixel)


def test_build_connectors():
    conns = connectors.build_connectors((8, 16), (16, 32))
    assert isinstance(conns, nn.ModuleList) and len(conns) == 2
    assert [(c[0].in_channels, c[0].out_channels) for c in conns] == [(8, 16), (16, 32)]
    outs = [c(torch.randn(2, cin, 4, 4)) for c, cin in zip(conns, (8, 16))]
    assert [o.shape[1] for o in outs] == [16, 32]
    # Connectors also exist where channel counts already agree (as in the reference code).
    same = connectors.build_connectors((4,), (4,))
    assert len(same) == 1 and isinstance(same[0], connectors.Connector)


def test_build_connectors_stage_mismatch():
    with pytest.raises(ValueError, match="stages"):
        connectors.build_connectors((8, 16), (16, 32, 64))


def test_connector_output_feeds_cd_loss():
    student = [torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)]
    teacher = [torch.randn(2, 16, 4, 4), torch.randn(2, 32, 2, 2)]
    conns = connectors.build_connectors((8, 16), (16, 32))
    with pytest.raises(ValueError):
        losses.cd_loss(student, teacher)
    mapped = [c(s) for c, s in zip(conns, student)]
    loss = losses.cd_loss(mapped, teacher)
    loss.backward()
    assert all(p.grad is not None for p in conns.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- input errors are ConfigErrors


def test_an_empty_batch_is_a_config_error_not_a_nan():
    from cdlib.errors import ConfigError

    empty = torch.zeros(0, 10)
    for call in (lambda: losses.kd_loss(empty, empty), lambda: losses.gkd_loss(empty, empty, torch.zeros(0, dtype=torch.long))):
        with pytest.raises(ConfigError, match="batch is empty"):
            call()
    # The reason it must be refused: the batch mean of nothing is NaN.
    assert torch.isnan(torch.zeros(0).mean())


@pytest.mark.parametrize("bad", [10, -1])
def test_gkd_targets_outside_the_classes_are_a_config_error(bad):
    from cdlib.errors import ConfigError

    logits = torch.randn(4, 10)
    targets = torch.tensor([0, 3, bad, 9])
    with pytest.raises(ConfigError, match=r"class indices from 0 to 9, got values from"):
        losses.gkd_loss(logits, logits.clone(), targets)
    # In range, the same call is fine (and equals KD when the teacher is right everywhere).
    ok = logits.argmax(1)
    assert torch.allclose(losses.gkd_loss(logits + 0.1, logits, ok), losses.kd_loss(logits + 0.1, logits, 1.0))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_temperatures_must_be_positive_and_finite(temperature):
    from cdlib.errors import ConfigError

    logits = torch.randn(3, 5)
    with pytest.raises(ConfigError, match="temperature must be a positive, finite number"):
        losses.kd_loss(logits, logits, temperature)


def test_ce_loss_is_cross_entropy_in_float32():
    logits, targets = torch.randn(6, 4).bfloat16(), torch.tensor([0, 1, 2, 3, 0, 1])
    value = losses.ce_loss(logits, targets)
    assert value.dtype == torch.float32
    assert torch.equal(value, torch.nn.functional.cross_entropy(logits.float(), targets))
