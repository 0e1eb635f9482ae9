"""The reference switches: each reproduces a behaviour of the authors' reference code, and only when on.

Each behaviour is checked against an independent computation: a plain PyTorch loop written the way
the reference trains (all terms computed, multiplied by their weights, one SGD step), a closed-form
weight-decay recursion, torch's own padding, a scripted sequence of test accuracies.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from repo_scripts import load_script

from cdlib import cli, data, losses, models, parts, recipes, train
from cdlib.distiller import Distiller
from cdlib.errors import ConfigError
from cdlib.parts import make_sgd
from cdlib.step import TrainStep

NUM_CLASSES = 5
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4  # the paper's CIFAR-100 optimiser
CD_ONLY = {"ce": 0.0, "cd": 6.0}  # EDT's warm-up: channel distillation alone


# ------------------------------------------------------------------ the switches as settings


def test_every_switch_is_off_by_default_and_reference_compat_turns_them_all_on():
    default = recipes.get("demo")
    assert not any(getattr(default, name) for name in recipes.REFERENCE_SWITCHES)
    assert not default.reference_compat
    compat = recipes.get("demo", reference_compat=True)
    assert all(getattr(compat, name) for name in recipes.REFERENCE_SWITCHES)
    assert set(recipes.REFERENCE_SWITCHES) == {"teacher_bn_train", "keep_zero_weight_terms", "gkd_nan_on_all_wrong",
                                               "report_best_epoch"}
    # Each switch alone leaves the others off.
    for name in recipes.REFERENCE_SWITCHES:
        one = recipes.get("demo", **{name: True})
        assert [n for n in recipes.REFERENCE_SWITCHES if getattr(one, n)] == [name]


def test_reference_compat_refuses_a_switch_turned_off_or_zero_padding():
    with pytest.raises(ConfigError, match="teacher_bn_train=False"):
        recipes.get("demo", reference_compat=True, teacher_bn_train=False)
    with pytest.raises(ConfigError, match="pad_mode='zeros'"):
        recipes.get("demo", reference_compat=True, data_options={"test_fraction": 0.5, "pad_mode": "zeros"})
    with pytest.raises(ConfigError, match="pad_mode must be one of reflect, zeros"):
        recipes.get("demo", data_options={"pad_mode": "mirror"})


def test_the_switches_are_command_line_options():
    parser = cli.build_parser()
    args = parser.parse_args(["distill", "--recipe", "demo", "--reference-compat"])
    cfg = recipes.get(args.recipe, **cli.changes_from_args(args))
    assert all(getattr(cfg, name) for name in recipes.REFERENCE_SWITCHES) and cfg.reference_compat
    args = parser.parse_args(["distill", "--recipe", "demo", "--keep-zero-weight-terms", "--data-options",
                              "pad_mode=zeros"])
    cfg = recipes.get(args.recipe, **cli.changes_from_args(args))
    assert cfg.keep_zero_weight_terms and not cfg.teacher_bn_train and cfg.data_options == {**recipes.get("demo").data_options, "pad_mode": "zeros"}


# ------------------------------------------------------------------ zero-weighted terms kept in the graph


def _pair():
    torch.manual_seed(3)
    return models.create("cifar_resnet10_w4", num_classes=NUM_CLASSES), models.create("cifar_resnet10_w8", num_classes=NUM_CLASSES)


def _batches(steps: int = 8, n: int = 8, size: int = 8):
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(n, 3, size, size, generator=g), torch.randint(0, NUM_CLASSES, (n,), generator=g))
            for _ in range(steps)]


def _train_with_cdlib(distiller: Distiller, batches) -> None:
    optimizer = make_sgd(distiller.trainable_parameters(), LR, MOMENTUM, WEIGHT_DECAY, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = TrainStep(distiller, distiller.terms, optimizer, scaler, torch.device("cpu"), None, channels_last=False)
    distiller.train()
    for images, labels in batches:
        step(images, labels, CD_ONLY)


def _train_like_the_reference(student, connectors, teacher, batches) -> None:
    """A plain loop in the reference's manner: every term computed and multiplied by its weight, even 0."""
    optimizer = torch.optim.SGD(list(student.parameters()) + list(connectors.parameters()), lr=LR, momentum=MOMENTUM,
                                weight_decay=WEIGHT_DECAY)
    student.train(), connectors.train(), teacher.eval()
    for images, labels in batches:
        logits, features = student(images, return_features=True)
        with torch.no_grad():
            _, teacher_features = teacher(images, return_features=True)
        ce = F.cross_entropy(logits, labels)
        cd = sum(((c(f).mean(dim=(2, 3)) - t.mean(dim=(2, 3))) ** 2).mean()
                 for c, f, t in zip(connectors, features, teacher_features))
        loss = CD_ONLY["ce"] * ce + CD_ONLY["cd"] * cd
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _decay_factor(steps: int) -> float:
    """What SGD with momentum and weight decay does to a weight whose loss gradient is exactly 0: w_t = a_t * w_0."""
    weight, velocity = 1.0, 0.0
    for _ in range(steps):
        velocity = MOMENTUM * velocity + WEIGHT_DECAY * weight
        weight -= LR * velocity
    return weight


def test_kept_zero_weight_terms_let_weight_decay_shrink_the_classifier_as_the_reference_loop_does():
    student, teacher = _pair()
    kept = Distiller(student, teacher, terms=("ce", "cd"), keep_zero_weight_terms=True)
    skipped = copy.deepcopy(kept)
    skipped.keep_zero_weight_terms = False
    reference = copy.deepcopy(kept)
    fc_before = student.fc.weight.detach().clone()
    batches = _batches()

    _train_with_cdlib(kept, batches)
    _train_with_cdlib(skipped, batches)
    _train_like_the_reference(reference.student, reference.connectors, reference.teacher, batches)

    # The reference loop's classifier and ours agree, weight for weight.
    assert torch.allclose(kept.student.fc.weight, reference.student.fc.weight, rtol=1e-5, atol=1e-7)
    assert torch.allclose(kept.student.fc.bias, reference.student.fc.bias, rtol=1e-5, atol=1e-7)
    for ours, theirs in zip(kept.student.parameters(), reference.student.parameters()):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    # ... and both are the closed-form decay of the initial weights (the CE term's gradient is exactly 0).
    factor = _decay_factor(len(batches))
    assert factor < 1 - 1e-3
    assert torch.allclose(kept.student.fc.weight, factor * fc_before, rtol=1e-5, atol=1e-8)
    assert kept.student.fc.weight.norm().item() == pytest.approx(factor * fc_before.norm().item(), rel=1e-5)
    # Our default skips the term: the classifier has no gradient and stays exactly as initialised.
    assert torch.equal(skipped.student.fc.weight, fc_before)
    assert skipped.student.fc.weight.grad is None
    assert torch.equal(kept.student.fc.weight.grad, torch.zeros_like(fc_before))


def test_kept_terms_are_computed_at_weight_zero_and_the_teacher_runs():
    student, teacher = _pair()
    distiller = Distiller(student, teacher, terms=("ce", "kd", "gkd", "cd"), keep_zero_weight_terms=True)
    calls = []
    distiller.teacher.register_forward_hook(lambda *args: calls.append(1))
    images, labels = _batches(1)[0]
    _, terms = distiller(images, labels, {"ce": 1.0, "kd": 0.0, "gkd": 0.0, "cd": 0.0})
    assert set(terms) == {"ce", "kd", "gkd", "cd"} and calls == [1]
    assert all(terms[t].item() == 0.0 for t in ("kd", "gkd", "cd"))
    assert terms["kd"].requires_grad, "a kept term stays in the graph"


# ------------------------------------------------------------------ GKD's NaN on an all-wrong batch


def _all_wrong():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.tensor([[5.0, 0.0, 0.0]] * 4)
    return student, teacher, torch.tensor([1, 2, 1, 2])  # the teacher says class 0 every time


def test_gkd_is_nan_on_an_all_wrong_batch_only_with_the_switch():
    student, teacher, targets = _all_wrong()
    assert losses.gkd_loss(student, teacher, targets).item() == 0.0
    assert torch.isnan(losses.gkd_loss(student, teacher, targets, nan_on_all_wrong=True))
    # Where the teacher is right somewhere, both agree with the mean KL over the kept samples.
    targets = torch.tensor([0, 2, 0, 2])
    kept = torch.tensor([True, False, True, False])
    p_t = torch.softmax(teacher, 1)
    by_hand = (p_t * (p_t.log() - torch.log_softmax(student, 1))).sum(1)[kept].mean()
    for nan in (False, True):
        assert losses.gkd_loss(student, teacher, targets, nan_on_all_wrong=nan).item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_the_nan_poisons_even_a_zero_weighted_gkd_when_terms_are_kept_as_in_the_reference():
    student, teacher = _pair()
    images, _ = _batches(1)[0]
    teacher.eval()
    with torch.no_grad():
        wrong = (teacher(images).argmax(1) + 1) % NUM_CLASSES  # labels the teacher gets all wrong
    weights = {"ce": 1.0, "gkd": 0.0}
    reference = Distiller(student, teacher, terms=("ce", "gkd"), keep_zero_weight_terms=True, gkd_nan_on_all_wrong=True)
    _, terms = reference(images, wrong, weights)
    assert torch.isnan(sum(terms.values()))
    _, terms = Distiller(student, teacher, terms=("ce", "gkd"), gkd_nan_on_all_wrong=True)(images, wrong, weights)
    assert set(terms) == {"ce"}, "a skipped zero-weight GKD cannot be NaN"
    _, terms = Distiller(student, teacher, terms=("ce", "gkd"))(images, wrong, {"ce": 1.0, "gkd": 0.1})
    assert terms["gkd"].item() == 0.0


# ------------------------------------------------------------------ reflect vs zero padding


def _matches_some_crop(out: torch.Tensor, image: torch.Tensor, pad: int, mode: str) -> bool:
    padded = F.pad(image.float()[None], (pad,) * 4, mode=mode)[0]
    h, w = image.shape[1:]
    crops = [padded[:, y : y + h, x : x + w] for y in range(2 * pad + 1) for x in range(2 * pad + 1)]
    return any(torch.equal(out.float(), c) or torch.equal(out.float(), c.flip(2)) for c in crops)


@pytest.mark.parametrize("pad_mode, torch_mode", [(None, "reflect"), ("reflect", "reflect"), ("zeros", "constant")])
def test_the_padding_is_reflect_unless_zeros_is_asked_for(pad_mode, torch_mode):
    options = {"num_classes": 2, "train_per_class": 16, "test_per_class": 2}
    bundle = data.load("synthetic", image_size=8, **options, **({"pad_mode": pad_mode} if pad_mode else {}))
    train_set = bundle.train
    assert train_set.pad_mode == (pad_mode or "reflect")
    # Images without black pixels of their own: a zero after augmentation comes from zero padding alone.
    images = torch.randint(1, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = data.augment_batch(images, train_set, torch.Generator().manual_seed(0))
    assert all(_matches_some_crop(o, i, train_set.pad, torch_mode) for o, i in zip(out, images))
    assert (out.min().item() == 0) == (pad_mode == "zeros")


def test_pad_mode_reaches_the_training_set_through_the_recipe_and_imagenet_refuses_it(tmp_path):
    cfg = recipes.get("demo", data_options={"test_fraction": 0.5, "pad_mode": "zeros"})
    assert parts.load_data(cfg).train.pad_mode == "zeros"
    assert parts.load_data(recipes.get("demo")).train.pad_mode == "reflect"
    assert "pad_mode" not in data.options("imagenet") and "pad_mode" in data.options("cifar100")


# ------------------------------------------------------------------ best-epoch reporting


def _tiny(tmp_path, **overrides) -> recipes.RunConfig:
    return recipes.get("demo", data="synthetic", data_root=None, image_size=8,
                       data_options={"num_classes": 4, "train_per_class": 8, "test_per_class": 4},
                       student="cifar_resnet10_w4", method="student", epochs=3, batch_size=8, lr_milestones=(3,),
                       max_steps_per_epoch=2, device="cpu", num_workers=0, progress=False,
                       run_dir=str(tmp_path / "run"), **overrides)


@pytest.mark.parametrize("best", [False, True])
def test_the_best_epoch_is_reported_only_with_the_switch(tmp_path, monkeypatch, best):
    scripted = iter([{"top1": 50.0, "top5": 90.0, "loss": 1.2}, {"top1": 80.0, "top5": 95.0, "loss": 0.8},
                     {"top1": 60.0, "top5": 91.0, "loss": 1.0}])
    monkeypatch.setattr(train, "evaluate", lambda *args, **kwargs: dict(next(scripted)))
    result = train.fit(_tiny(tmp_path, report_best_epoch=best))
    assert [row["test_top1"] for row in result.metrics] == [50.0, 80.0, 60.0]
    assert result.final == ({"top1": 80.0, "top5": 95.0, "loss": 0.8, "epoch": 2} if best
                            else {"top1": 60.0, "top5": 91.0, "loss": 1.0, "epoch": 3})
    # model.pt holds the last epoch's weights, so it carries the last epoch's numbers either way.
    assert torch.load(result.model_path, weights_only=True)["final"]["top1"] == 60.0


# ------------------------------------------------------------------ teacher BatchNorm in train mode


def test_teacher_bn_train_gives_the_targets_of_a_teacher_in_train_mode():
    student, teacher = _pair()
    images, labels = _batches(1, n=16)[0]
    for bn_train in (False, True):
        distiller = Distiller(copy.deepcopy(student), copy.deepcopy(teacher), terms=("ce", "kd"), teacher_bn_train=bn_train)
        plain_student, plain_teacher = copy.deepcopy(distiller.student), copy.deepcopy(distiller.teacher)
        distiller.train()
        with torch.no_grad():
            _, terms = distiller(images, labels, {"ce": 0.0, "kd": 1.0})
            plain_teacher.train(bn_train)  # the reference's net.train() reaches the teacher too
            expected = losses.kd_loss(plain_student.train()(images), plain_teacher(images), 4.0)
            other = losses.kd_loss(copy.deepcopy(plain_student)(images), copy.deepcopy(teacher).train(not bn_train)(images), 4.0)
        assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-5)
        assert terms["kd"].item() != pytest.approx(other.item(), rel=1e-3)
        assert distiller.teacher.training == bn_train


# ------------------------------------------------------------------ runs saved before the switches existed


def test_a_finished_run_saved_before_the_switches_existed_counts_as_one_with_them_off(tmp_path):
    import json

    from cdlib import seeds
    from cdlib.runfolder import config_dict

    cfg = _tiny(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    older = {k: v for k, v in config_dict(cfg).items() if k not in recipes.REFERENCE_SWITCHES + ("reference_compat",)}
    (folder / "config.json").write_text(json.dumps(older))
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_top1": 50.0}) + "\n")
    (folder / "model.pt").write_bytes(b"")
    assert seeds._finished(cfg)
    with pytest.raises(ConfigError, match="keep_zero_weight_terms: False -> True"):
        seeds._finished(cfg.replace(keep_zero_weight_terms=True))


def test_the_committed_switch_table_follows_from_the_committed_per_seed_results():
    from pathlib import Path

    import pandas as pd

    root = Path(__file__).resolve().parents[1]
    folder = root / "results" / "reference-switches"
    if not (folder / "switches.csv").exists():
        pytest.skip("no committed reference-switch results")
    module = load_script(root / "benchmarks" / "reference_switches.py")
    per_seed = pd.read_csv(folder / "per_seed.csv")
    assert sorted(per_seed[per_seed["method"] == module.DEFAULT]["seed"]) == [0, 1, 2, 3, 4]
    recomputed = module.switch_table(per_seed)
    committed = pd.read_csv(folder / "switches.csv")
    assert list(recomputed["switch"]) == list(committed["switch"])
    for column in ("top1_mean", "diff_mean", "diff_ci_low", "diff_ci_high"):
        assert recomputed[column].tolist() == pytest.approx(committed[column].tolist(), nan_ok=True, abs=1e-9)
    assert recomputed["verdict"].tolist() == committed["verdict"].tolist()
