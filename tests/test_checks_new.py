"""The checks of exercises 4 (KD loss with a temperature) and 5 (channel attention and connector):
each PASSES right answers (cdlib's own, independent rewrites, the instructor notebook's solution)
and FAILS each catalogued mistake with that mistake's own diagnosis, plus hand-written wrong
answers of the kinds students write (F.kl_div misuse, a Sequential in the wrong order ...)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cdlib import checks, losses
from cdlib.checks import connector, kd_loss
from cdlib.connectors import Connector

REPO = Path(__file__).resolve().parent.parent
nbformat = pytest.importorskip("nbformat")


def _cells(folder: str, notebook: str, marker: str):
    nb = nbformat.read(REPO / folder / notebook, as_version=4)
    return [c for c in nb.cells if c.cell_type == "code" and marker in c.source]


def _defined(folder: str, notebook: str, name: str, marker: str = "### BEGIN SOLUTION"):
    """What the marked cells of a notebook define under ``name`` (run with the notebook's imports)."""
    namespace: dict = {"torch": torch, "F": F, "nn": nn, "math": math}
    cells = _cells(folder, notebook, marker)
    assert cells, f"{notebook}: no cell with {marker!r}"
    for cell in cells:
        exec(compile(cell.source, f"{notebook}:{name}", "exec"), namespace)
    return namespace[name]


def _fails_with(check, fn, *expected: str) -> str:
    with pytest.raises(checks.CheckFailed) as info:
        check(fn)
    message = str(info.value)
    for text in expected:
        assert text in message, f"expected {text!r} in the diagnosis of {getattr(fn, '__name__', fn)}, got:\n{message}"
    return message


def _passes(check, fn, capsys):
    check(fn)
    out = capsys.readouterr().out
    assert out.startswith("✓") and len(out.splitlines()) == 1, out


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
    _passes(checks.check_kd_loss, _defined("notebooks/exercises", "exercise4_kd_loss.ipynb", "my_kd_loss"), capsys)


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
    fn = _defined("notebooks/exercises", "exercise5_connector.ipynb", "my_channel_attention")
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
    _passes(checks.check_connector, _defined("notebooks/exercises", "exercise5_connector.ipynb", "MyConnector"), capsys)


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
    ex4, ex5 = checks.exercise("exercise4_kd_loss"), checks.exercise("exercise5_connector")
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
