"""cdlib_bench.estimate and cdlib_bench.flops: projected wall time from counted FLOPs, checked against a hand count; and
cdlib_bench.timing (`cdlib measure`, the chapters' "Time" line): projected wall time from steps timed here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cdlib import cli, models, recipes, train
from cdlib.connectors import build_connectors
from cdlib.errors import ConfigError
from cdlib_bench import estimate, timing
from cdlib_bench.flops import (
    DEFAULT_ASSUMED_UTILISATION,
    PEAK_DENSE_TFLOPS,
    count_flops,
    gpu_model_key,
    model_flops,
    peak_tflops,
    step_flops,
)

TINY = dict(data="synthetic", data_root=None, image_size=16,
            data_options={"num_classes": 10, "train_per_class": 20, "test_per_class": 5},
            student="cifar_resnet10_w4", teacher="cifar_resnet10_w8", epochs=3, lr_milestones=(2,))
TRAIN_IMAGES, TEST_IMAGES, SIDE, CLASSES = 200, 50, 16, 10


def _layer_flops(model: nn.Module, run) -> list:
    """2 x multiply-adds of every Conv2d / Linear while ``run()`` executes, in call order,
    from the layers' shapes (the formula, not torch's counter)."""
    found = []

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs = output.numel() * module.in_channels // module.groups * kh * kw
        else:
            macs = output.numel() * module.in_features
        found.append(2 * macs)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return found


def _hand_counts(name: str):
    """(forward, training step) FLOPs per image of a model, from its layers' shapes. A backward
    pass costs two forwards (gradients of input and of weights), except that the first
    convolution computes no gradient for the images."""
    net = models.create(name, num_classes=CLASSES).eval()
    layers = _layer_flops(net, lambda: net(torch.zeros(1, 3, SIDE, SIDE)))
    forward = sum(layers)
    return forward, 3 * forward - layers[0]


def _hand_connector_training_flops() -> int:
    student = models.create(TINY["student"], num_classes=CLASSES).eval()
    teacher = models.create(TINY["teacher"], num_classes=CLASSES)
    connectors = build_connectors(student.stage_channels, teacher.stage_channels).eval()
    with torch.no_grad():
        _, features = student(torch.zeros(1, 3, SIDE, SIDE), return_features=True)
    forward = sum(_layer_flops(connectors, lambda: [c(f) for c, f in zip(connectors, features)]))
    return 3 * forward  # forward, gradient of the student's features, gradient of the weights


def test_projection_matches_a_hand_computation():
    cfg = recipes.get("demo", **TINY)
    s_fwd, s_train = _hand_counts(TINY["student"])
    t_fwd, t_train = _hand_counts(TINY["teacher"])
    per_second = 65.0e12 * DEFAULT_ASSUMED_UTILISATION  # T4 fp16 dense peak x the assumption
    assert peak_tflops("T4", "fp16") == 65.0

    e = estimate.recipe_time(cfg, "T4", "student,kd,cd+gkd+edt")
    epochs = cfg.epochs
    teacher_seconds = epochs * (TRAIN_IMAGES * t_train + TEST_IMAGES * t_fwd) / per_second
    assert e["teacher"]["trained"] and e["teacher"]["seconds"] == pytest.approx(teacher_seconds, rel=1e-9)

    steps = {"student": s_train, "kd": s_train + t_fwd, "cd+gkd+edt": s_train + t_fwd + _hand_connector_training_flops()}
    for row in e["students"]:
        method = row["method"]
        assert row["flops_per_image"] == pytest.approx(steps[method], rel=1e-9), method
        flops = epochs * (TRAIN_IMAGES * steps[method] + TEST_IMAGES * s_fwd)
        if method != "student":
            flops += TEST_IMAGES * t_fwd  # the teacher's test pass before distilling
        assert row["seconds"] == pytest.approx(flops / per_second, rel=1e-9), method
    assert e["total_seconds"] == pytest.approx(teacher_seconds + sum(r["seconds"] for r in e["students"]))
    assert e["utilisation"] == DEFAULT_ASSUMED_UTILISATION and "not a measurement" in e["label"]


def test_losses_without_connectors_add_no_flops():
    # The losses are element-wise: a step of kd, gkd or at costs the student's training
    # step plus the teacher's forward, whatever the terms; "edt" is a schedule, not a loss.
    s_train = model_flops(TINY["student"], SIDE, CLASSES)[1]
    t_fwd = model_flops(TINY["teacher"], SIDE, CLASSES)[0]
    assert step_flops(TINY["student"], TINY["teacher"], ("ce",), SIDE, CLASSES) == s_train
    for loss_terms in (("ce", "kd"), ("ce", "gkd", "edt"), ("ce", "at"), ("kd", "ce", "gkd", "at")):
        assert step_flops(TINY["student"], TINY["teacher"], loss_terms, SIDE, CLASSES) == s_train + t_fwd, loss_terms


# ------------------------------------------------------------------ the counter and the peak table


def test_conv_flops_match_hand_count():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.randn(1, 3, 8, 8)
    # 2 FLOPs per multiply-add; each of the 8 x 8 x 8 outputs takes 3 x 3 x 3 of them.
    assert count_flops(lambda: conv(x)) == 2 * 3 * 3 * 3 * 8 * 8 * 8 == 27648


def test_small_model_forward_flops_match_hand_count():
    model = models.create(TINY["student"], num_classes=10).eval()
    x = torch.randn(2, 3, 16, 16)
    by_hand = sum(_layer_flops(model, lambda: model(x)))
    assert by_hand > 0
    with torch.no_grad():
        assert count_flops(lambda: model(x)) == by_hand


def test_paper_pair_flops_are_in_the_expected_range():
    # Independent order of magnitude: ImageNet ResNet152 is ~11.5 GMAC at 224 px with
    # 56x56 maps in stage 1; the CIFAR stem keeps 32x32 there, (32/56)^2 of the work.
    teacher_gflops = model_flops("cifar_resnet152", 32, 100)[0] / 1e9
    assert 2 * 11.5 * (32 / 56) ** 2 * 0.8 < teacher_gflops < 2 * 11.5 * (32 / 56) ** 2 * 1.2


@pytest.mark.parametrize(
    "name, key",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", None),
        ("Tesla T4", "T4"),
        ("Tesla V100-SXM2-16GB", "V100 SXM2"),
        ("Tesla V100-PCIE-32GB", "V100 PCIe"),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_gpu_names_map_to_peak_table(name, key):
    assert gpu_model_key(name) == key
    if key is not None:
        assert key in PEAK_DENSE_TFLOPS


def test_peak_table_is_sane():
    assert peak_tflops("T4", "bf16") is None  # Turing has no bf16 tensor cores
    assert peak_tflops(None, "fp16") is None
    for gpu, peaks in PEAK_DENSE_TFLOPS.items():
        assert peaks["fp16"] > peaks["fp32"] > 0, gpu
        if peaks["tf32"] is not None:
            assert peaks["fp16"] > peaks["tf32"] > peaks["fp32"], gpu
    for key, precision in estimate.GPUS.values():  # every --gpu of cdlib estimate has a peak for amp="auto"
        assert peak_tflops(key, precision) is not None


# ------------------------------------------------------------------ recipes, GPUs and the command line


def test_gpus_precision_and_capped_epochs():
    cfg = recipes.get("demo", **TINY)
    t4, h100 = estimate.recipe_time(cfg, "T4"), estimate.recipe_time(cfg, "H100")
    assert (t4["precision"], h100["precision"]) == ("fp16", "bf16")
    assert estimate.recipe_time(cfg, "h100")["total_seconds"] == h100["total_seconds"]
    assert t4["total_seconds"] / h100["total_seconds"] == pytest.approx(989.4 / 65.0)
    # amp off: TF32 convolutions on the H100, plain fp32 on the T4
    assert estimate.recipe_time(cfg.replace(amp="off"), "H100")["precision"] == "tf32"
    assert estimate.recipe_time(cfg.replace(amp="off"), "T4")["precision"] == "fp32"
    capped = estimate.recipe_time(cfg.replace(max_steps_per_epoch=2, batch_size=16), "T4")
    assert capped["train_images"] == 32


def test_teacher_counts_only_when_trained():
    cfg = recipes.get("demo", **TINY)
    assert not estimate.recipe_time(cfg, "T4", "student")["teacher"]["trained"]
    given = estimate.recipe_time(cfg.replace(teacher_checkpoint="t/model.pt"), "T4", "kd")["teacher"]
    assert not given["trained"] and given["seconds"] == 0 and "checkpoint" in given["reason"]


@pytest.mark.parametrize("call, fragment", [
    (lambda: estimate.recipe_time("demo", "V100"), "unknown GPU 'V100'"),
    (lambda: estimate.recipe_time("no-such-recipe"), "unknown recipe"),
    (lambda: estimate.recipe_time(recipes.get("demo", amp="bf16"), "T4"), "no bf16 tensor cores"),
    (lambda: estimate.recipe_time("demo", "T4", "kd+nonsense"), "unknown method term"),
    (lambda: estimate.recipe_time("demo", "T4", utilisation=0), "utilisation"),
])
def test_bad_input_is_one_config_error_sentence(call, fragment):
    with pytest.raises(ConfigError) as info:
        call()
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_cli_prints_a_labelled_estimate(capsys):
    args = ["estimate", "--recipe", "demo", "--method", "student,kd", "--gpu", "T4,H100"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("estimate: counted FLOPs at 15 % of dense peak, not a measurement") == 2
    cfg = recipes.get("demo", method="student,kd")
    for gpu in ("T4", "H100"):
        e = estimate.recipe_time(cfg, gpu)
        assert f"GPU {gpu} ({e['peak_key']}), {e['precision']}" in out
        assert f"total                        ~{estimate.duration(e['total_seconds'])}" in out
    assert "teacher cifar_resnet10_w16" in out and "\n  kd " in out


def test_cli_bad_gpu_or_recipe_is_one_line(capsys):
    for args in (["estimate", "--recipe", "demo", "--gpu", "P100"], ["estimate", "--recipe", "nope"]):
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("cdlib: error: ") and err.count("\n") == 1


def test_chapter_line_is_computed():
    line = timing.chapter_line("demo", "student,kd,kd", paper_recipe="demo", gpus=("T4", "H100"))
    cfg = recipes.get("demo")
    t4 = estimate.duration(estimate.recipe_time(cfg, "T4", ["student", "kd", "kd"])["total_seconds"])
    h100 = estimate.duration(estimate.recipe_time(cfg, "H100", ["student", "kd", "kd"])["total_seconds"])
    assert line == (f"Default run (recipe demo, methods student, kd x2, teacher training included): about {t4} on a T4, "
                    f"{h100} on an H100 (estimate: counted FLOPs at 15 % of peak). The paper's recipe: {t4} on a T4.")


@pytest.mark.parametrize("seconds, text", [(0.2, "1 s"), (42, "42 s"), (59.6, "1 min"), (35 * 60, "35 min"),
                                           (3599, "1.0 h"), (4.84 * 3600, "4.8 h"), (29.4 * 3600, "29 h")])
def test_duration(seconds, text):
    assert estimate.duration(seconds) == text


def test_colab_recipe_fits_a_t4_and_keeps_the_papers_training():
    colab, paper = recipes.get("cifar100-colab"), recipes.get("cifar100")
    assert colab.lr_milestones == recipes.scale_milestones(paper.lr_milestones, paper.epochs, colab.epochs)
    same = ("data", "weights", "schedule", "batch_size", "lr", "momentum", "weight_decay", "lr_gamma",
            "kd_temperature", "gkd_temperature", "amp")
    assert all(getattr(colab, k) == getattr(paper, k) for k in same)
    e = estimate.recipe_time(colab, "T4", "student,kd,gkd,cd,cd+gkd,cd+gkd+edt,at,fitnets")
    assert e["teacher"]["trained"] and e["teacher"]["seconds"] <= 30 * 60
    assert max(s["seconds"] for s in e["students"]) <= 20 * 60


# ------------------------------------------------------------------ a run in progress


def test_run_eta_arithmetic():
    # 3 epochs finished in 10, 12 and 14 s; 2.25 epochs to go -> 12 s x 2.25
    assert train.run_eta(2.25, [10.0, 12.0, 14.0], elapsed=99.0, fraction_timed=0.5) == pytest.approx(27.0)
    # none finished yet: 30 s for the first 0.25 of an epoch -> 120 s an epoch, 9.75 epochs left
    assert train.run_eta(9.75, [], elapsed=30.0, fraction_timed=0.25) == pytest.approx(1170.0)
    assert train.run_eta(5.0, [], elapsed=0.0, fraction_timed=0.0) is None
    assert train.run_eta(-0.0001, [8.0]) == 0.0


@pytest.mark.parametrize("seconds, text", [(0, "00:00"), (754.4, "12:34"), (3723, "1:02:03"), (100_000, "27:46:40")])
def test_clock(seconds, text):
    assert train.clock(seconds) == text


@pytest.mark.parametrize("epoch, step, text", [
    (7, 120, "resuming at epoch 7 step 120 of 200 epochs: 6.3 epochs were already trained."),
    (7, 0, "resuming at the start of epoch 7 of 200: 6 epochs were already trained."),
    (2, 0, "resuming at the start of epoch 2 of 200: 1 epoch was already trained."),
    (201, 0, "resuming a finished run: all 200 epochs were already trained."),
])
def test_resume_message(epoch, step, text):
    assert train.resume_message(epoch, step, 390, 200) == text


class _StopAt:
    def __init__(self, epoch, step):
        self.at = (epoch, step)

    def __call__(self, epoch, step):
        if (epoch, step) == self.at:
            raise KeyboardInterrupt


def test_a_run_shows_its_eta_and_a_resumed_run_what_was_saved(tmp_path, capsys):
    from cdlib import train

    cfg = recipes.get("demo", **{**TINY, "epochs": 2, "lr_milestones": ()}, batch_size=20, max_steps_per_epoch=10,
                      run_dir=str(tmp_path / "run"), method="student", device="cpu", progress=True)
    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg, on_step=_StopAt(2, 3))
    first = capsys.readouterr()
    assert "run ETA " in first.err  # the bar's postfix, at the epoch's last step (the 20-step log point)
    train.fit(cfg.replace(resume=True))
    assert "resuming at epoch 2 step 3 of 2 epochs: 1.3 epochs were already trained." in capsys.readouterr().out


# ------------------------------------------------------------------ measured (cdlib measure)


def test_measured_time_is_images_over_measured_speed():
    cfg = recipes.get("demo", **TINY, batch_size=16, device="cpu")
    measured = timing.measured_time(cfg, "student,kd", steps=1, warmup=0, eval_batches=1)
    m = measured["measurement"]
    assert m["label"].startswith("measured on CPU") and m["precision"] == "fp32" and m["steps"] == 1
    assert "DeviceLoader" in m["loader"]
    test_speed = m["test_images_per_s"]
    teacher = measured["teacher"]
    assert teacher["trained"] and teacher["seconds"] == pytest.approx(
        3 * (TRAIN_IMAGES / m["teacher_row"]["train_images_per_s"] + TEST_IMAGES / test_speed[TINY["teacher"]]))
    for row in measured["students"]:
        timed = m["methods"][row["method"]]
        assert timed["timed_images"] == 16 and timed["losses_finite"]
        expected = 3 * (TRAIN_IMAGES / timed["train_images_per_s"] + TEST_IMAGES / test_speed[TINY["student"]])
        if row["method"] == "kd":
            expected += TEST_IMAGES / test_speed[TINY["teacher"]]
        assert row["seconds"] == pytest.approx(expected), row["method"]
    students = sum(r["seconds"] for r in measured["students"])
    assert measured["total_seconds"] == pytest.approx(teacher["seconds"] + students)
    text = timing.format_measured(measured, [estimate.recipe_time(cfg, "T4", "student,kd")])
    assert "Projected wall time, measured on CPU" in text and "FLOP est. T4" in text
    assert f"~{estimate.duration(measured['total_seconds'])}" in text
    # A measurement of other models projects nothing.
    with pytest.raises(ConfigError, match="cannot project"):
        timing.measured_time(cfg.replace(student="cifar_resnet10_w8"), "student,kd", measurement=m)


def test_cli_measure_prints_both_and_rejects_bad_input(capsys):
    tiny = ["--data", "synthetic", "--image-size", "16", "--data-options", "num_classes=10", "train_per_class=20",
            "test_per_class=5", "--student", "cifar_resnet10_w4", "--teacher", "cifar_resnet10_w8",
            "--method", "student", "--epochs", "3", "--batch-size", "16", "--device", "cpu"]
    assert cli.main(["measure", "--recipe", "demo", *tiny, "--steps", "1", "--gpu", "T4,H100"]) == 0
    out = capsys.readouterr().out
    assert "Projected wall time, measured on CPU" in out and "1 timed training steps per row" in out
    assert "FLOP est. T4" in out and "FLOP est. H100" in out  # the FLOP-based estimates beside it
    assert "Chapters" not in out  # the chapters run cifar100-colab, not this recipe
    for bad, fragment in ((["--steps", "0"], "--steps must be at least 1"),
                          (["--device", "tpu9"], "unknown device 'tpu9'")):
        assert cli.main(["measure", "--recipe", "demo", *tiny[:-2], *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cdlib: error: ") and fragment in err and err.count("\n") == 1, err
    # The spelling before `cdlib measure` existed points to it, and estimates nothing.
    assert cli.main(["estimate", "--recipe", "demo", "--measure"]) == 2
    captured = capsys.readouterr()
    assert "run `cdlib measure`" in captured.err and captured.out == ""


def test_chapter_line_measures_only_when_asked_or_on_a_gpu():
    flop_line = timing.chapter_line("demo", "student", paper_recipe="demo", measure=False)
    if not torch.cuda.is_available():
        assert timing.chapter_line("demo", "student", paper_recipe="demo") == flop_line
    measured = timing.chapter_line("demo", "student", paper_recipe="demo", measure=True, steps=1)
    assert "measured on CPU" in measured or "measured on" in measured
    assert "1 training steps of each timed just now" in measured and "(estimate)." in measured
    with pytest.raises(ConfigError):
        timing.chapter_line("demo", "student", measure="sometimes")


def test_chapters_match_their_notebooks():
    import json
    import re
    from pathlib import Path

    notebooks = Path(__file__).resolve().parent.parent / "notebooks"
    for chapter, (recipe, methods) in timing.CHAPTERS.items():
        cells = json.loads((notebooks / f"{chapter}.ipynb").read_text())["cells"]
        source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert f'RECIPE = "{recipe}"' in source, chapter
        call = re.search(r'timing\.chapter_line\("([^"]+)",\s*(.+?)\)\s*\n', source, re.S)
        assert call and call.group(1) == recipe, chapter
        scope = {}
        for name in ("METHODS", "METHOD", "SCHEDULES"):
            found = re.search(rf"^{name} = (.+?)(\s+#.*)?$", source, re.M)
            if found:
                scope[name] = eval(found.group(1), {}, {})  # a literal from the parameters cell
        listed = eval(call.group(2), {}, scope)
        listed = listed.split(",") if isinstance(listed, str) else list(listed)
        assert tuple(listed) == methods, chapter


def test_a_gpu_given_as_a_list_is_one_sentence_not_a_type_error():
    with pytest.raises(ConfigError, match=r"unknown GPU \['T4'\]"):
        estimate.recipe_time(recipes.get("demo"), ["T4"])
