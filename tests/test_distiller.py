"""cdlib.distiller.Distiller: a frozen teacher, skipped zero-weight terms, loss values
checked against hand computations, and what is (not) trained and saved."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cdlib import models
from cdlib.distiller import Distiller
from cdlib.errors import ConfigError
from cdlib.step import TrainStep

NUM_CLASSES = 5
ALL_TERMS = ("ce", "kd", "gkd", "cd")



def _pair(num_classes: int = NUM_CLASSES, teacher_classes: int | None = None):
    student = models.create("cifar_resnet10_w4", num_classes=num_classes)
    teacher = models.create("cifar_resnet10_w8", num_classes=teacher_classes or num_classes)
    return student, teacher


def _batch(n: int = 8, size: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g)


def _teacher_state(distiller: Distiller) -> dict:
    return {k: v.clone() for k, v in distiller.teacher.state_dict().items()}


def _train_steps(distiller: Distiller, weights: dict, steps: int = 3) -> None:
    optimizer = torch.optim.SGD(list(distiller.trainable_parameters()), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = TrainStep(distiller, distiller.terms, optimizer, scaler, torch.device("cpu"), None, channels_last=False)
    distiller.train()
    for i in range(steps):
        images, labels = _batch()
        step(images + i, labels, weights)


def test_teacher_gets_no_gradient_and_keeps_parameters_and_batchnorm_statistics():
    student, teacher = _pair()
    distiller = Distiller(student, teacher, terms=ALL_TERMS)
    before = _teacher_state(distiller)
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    _train_steps(distiller, {"ce": 1.0, "kd": 1.0, "gkd": 1.0, "cd": 6.0})

    assert not distiller.teacher.training, "the teacher must stay in eval mode while the distiller trains"
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    after = distiller.teacher.state_dict()
    running = [k for k in before if "running_mean" in k or "running_var" in k]
    assert running, "the teacher has BatchNorm statistics to check"
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"teacher {key} changed during distillation"
    # ...while the student did learn (so the check above is not vacuous).
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in student_before.items() if v.is_floating_point())


def test_teacher_bn_train_reproduces_the_reference_codes_drifting_statistics():
    student, teacher = _pair()
    distiller = Distiller(student, teacher, terms=ALL_TERMS, teacher_bn_train=True)
    before = _teacher_state(distiller)
    _train_steps(distiller, {"ce": 1.0, "kd": 1.0, "cd": 6.0})

    assert distiller.teacher.training
    after = distiller.teacher.state_dict()
    drifted = [k for k in before if "running_mean" in k and not torch.equal(before[k], after[k])]
    assert drifted, "with teacher_bn_train=True the teacher's running statistics must move"
    params = dict(distiller.teacher.named_parameters())
    assert all(torch.equal(before[k], params[k]) for k in params), "the teacher's parameters stay frozen all the same"


def _count_teacher_calls(distiller: Distiller) -> list:
    calls = []
    distiller.teacher.register_forward_hook(lambda module, args, out: calls.append(1))
    return calls


def test_zero_weight_terms_are_not_computed_and_the_teacher_does_not_run_for_ce_alone():
    student, teacher = _pair()
    distiller = Distiller(student, teacher, terms=ALL_TERMS)
    calls = _count_teacher_calls(distiller)
    images, labels = _batch()

    _, losses = distiller(images, labels, {"ce": 1.0, "kd": 0.0, "gkd": 0.0, "cd": 0.0})
    assert set(losses) == {"ce"}
    assert calls == [], "no term needs the teacher, so it must not run"

    _, losses = distiller(images, labels, {"ce": 1.0, "kd": 0.5, "cd": 0.0})  # gkd missing = weight 0
    assert set(losses) == {"ce", "kd"}
    assert len(calls) == 1

    _, losses = distiller(images, labels, {"ce": 0.0, "cd": 6.0})
    assert set(losses) == {"cd"}


def test_loss_values_equal_hand_computations():
    student, teacher = _pair()
    distiller = Distiller(student, teacher, terms=ALL_TERMS, kd_temperature=4.0, gkd_temperature=2.0)
    distiller.train()
    images, labels = _batch(16)
    weights = {"ce": 0.7, "kd": 0.9, "gkd": 0.3, "cd": 6.0}
    with torch.no_grad():
        logits, losses = distiller(images, labels, weights)
        # The same forward passes, by hand (BatchNorm in train mode for the student, eval for the teacher).
        s_logits, s_feats = student(images, return_features=True)
        t_logits, t_feats = teacher(images, return_features=True)

    assert torch.allclose(logits, s_logits)
    assert losses["ce"].item() == pytest.approx(0.7 * F.cross_entropy(s_logits, labels).item(), rel=1e-6)

    def kl_rows(temperature):
        p_t = torch.softmax(t_logits.double() / temperature, dim=1)
        log_p_s = torch.log_softmax(s_logits.double() / temperature, dim=1)
        return (p_t * (p_t.log() - log_p_s)).sum(dim=1)

    kd = 4.0**2 * kl_rows(4.0).mean()
    assert losses["kd"].item() == pytest.approx(0.9 * kd.item(), rel=1e-5)

    kept = t_logits.argmax(1) == labels
    gkd = 2.0**2 * kl_rows(2.0)[kept].sum() / max(int(kept.sum()), 1)
    assert losses["gkd"].item() == pytest.approx(0.3 * gkd.item(), rel=1e-5, abs=1e-9)

    with torch.no_grad():
        cd = sum(
            ((connector(fs).mean(dim=(2, 3)) - ft.mean(dim=(2, 3))) ** 2).mean()
            for connector, fs, ft in zip(distiller.connectors, s_feats, t_feats)
        )
    assert losses["cd"].item() == pytest.approx(6.0 * cd.item(), rel=1e-5)


def test_trainable_parameters_exclude_the_teacher_and_include_the_connectors():
    student, teacher = _pair()
    distiller = Distiller(student, teacher, terms=("ce", "cd", "fitnets"))
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert trainable == (
        {id(p) for p in student.parameters()}
        | {id(p) for p in distiller.connectors.parameters()}
        | {id(p) for p in distiller.hint_regressor.parameters()}
    )
    assert not trainable & {id(p) for p in teacher.parameters()}


def test_trainable_state_dict_holds_no_teacher_and_round_trips():
    student, teacher = _pair()
    distiller = Distiller(student, teacher, terms=ALL_TERMS)
    state = distiller.trainable_state_dict()
    assert not [k for k in state if k.startswith("teacher.")], "the teacher is saved once, in its own file"
    assert any(k.startswith("connectors.") for k in state) and any(k.startswith("student.") for k in state)

    other = Distiller(*_pair(), terms=ALL_TERMS)
    other.load_trainable_state_dict(state)
    for key, value in state.items():
        assert torch.equal(other.state_dict()[key], value)

    without_cd = Distiller(*_pair(), terms=("ce", "kd"))
    with pytest.raises(ConfigError, match="does not match"):
        without_cd.load_trainable_state_dict(state)
    wider_student = Distiller(models.create("cifar_resnet10_w8", num_classes=NUM_CLASSES), teacher, terms=ALL_TERMS)
    with pytest.raises(ConfigError, match="does not match"):
        wider_student.load_trainable_state_dict(state)


def test_teacher_student_class_count_mismatch_is_a_config_error():
    student, teacher = _pair(num_classes=5, teacher_classes=7)
    with pytest.raises(ConfigError, match="5 classes but teacher predicts 7"):
        Distiller(student, teacher, terms=("ce", "kd"))


def test_missing_teacher_and_unknown_terms_are_config_errors():
    student, _ = _pair()
    with pytest.raises(ConfigError, match="need a teacher"):
        Distiller(student, None, terms=("ce", "kd"))
    with pytest.raises(ConfigError, match="unknown loss term"):
        Distiller(student, None, terms=("ce", "dk"))
    # A plain student needs no teacher, and one passed anyway is not kept (nor trained, nor saved).
    alone = Distiller(student, models.create("cifar_resnet10_w8", num_classes=NUM_CLASSES), terms=("ce",))
    assert alone.teacher is None


def test_a_step_with_every_weight_zero_changes_nothing():
    student, teacher = _pair()
    distiller = Distiller(student, teacher, terms=("ce", "cd"))
    before = {k: v.clone() for k, v in distiller.trainable_state_dict().items()}
    optimizer = torch.optim.SGD(list(distiller.trainable_parameters()), lr=0.1, momentum=0.9, weight_decay=5e-4)
    step = TrainStep(distiller, distiller.terms, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                     torch.device("cpu"), None, channels_last=False)
    distiller.eval()  # keep BatchNorm statistics still, so only an optimizer update could change anything
    images, labels = _batch()
    stats = step(images, labels, {"ce": 0.0, "cd": 0.0})
    assert stats.tolist()[:2] == [0.0, 0.0] and stats.tolist()[-2:] == [8.0, 1.0]
    for key, value in distiller.trainable_state_dict().items():
        assert torch.equal(value, before[key]), f"{key} moved in a step with nothing to learn"
    assert not optimizer.state, "no optimizer state (momentum) may be created by such a step"


# --------------------------------------------------------------------------- the table of terms


@pytest.mark.parametrize("term", ["ce", "kd", "gkd", "cd", "at", "fitnets"])
def test_each_terms_row_says_what_forward_really_uses(term):
    """cdlib.terms tells the trainer whether to build a teacher: for each term alone, the teacher
    runs exactly when the row says it is needed, and the student's stage maps are asked for exactly
    when the row says features are needed; every term of the table has its line in forward."""
    from cdlib import terms

    student, teacher = _pair()
    distiller = Distiller(student, teacher, terms=("ce", term))
    calls = {"teacher": 0, "features": 0}
    teacher.register_forward_hook(lambda *a: calls.__setitem__("teacher", calls["teacher"] + 1))
    plain_forward = student.forward

    def counting_forward(images, return_features=False):
        calls["features"] += bool(return_features)
        return plain_forward(images, return_features=return_features)

    student.forward = counting_forward
    images, labels = _batch()
    _, out = distiller(images, labels, {term: 1.0})
    row = terms.get(term)
    assert set(out) == {term}
    assert bool(calls["teacher"]) == row.needs_teacher, term
    assert bool(calls["features"]) == row.needs_features, term


def test_every_loss_term_is_a_method_term_and_has_a_weight():
    from cdlib import recipes, terms

    for name in terms.loss_terms():
        assert recipes.parse_method(name)[-1] == name
        assert name in recipes.RunConfig().weights
