"""cdlib_bench: the benchmark machinery gives sane, internally consistent numbers.

No timing assertions: the machine is shared and noisy. What is checked: the
step's FLOP breakdown against hand computations and the projection's
arithmetic (cdlib_bench.flops, the counter and the peak table, is checked in
test_estimate.py), that the reference-style step really does what the
reference did (teacher in train mode, zero-weight losses computed), that ours
does not, and that a tiny end-to-end run yields a complete, self-consistent
result.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from torch import nn

import cdlib_bench as bench
from cdlib import data, models, terms
from cdlib.connectors import build_connectors
from cdlib.distiller import Distiller
from cdlib.errors import ConfigError
from cdlib_bench.flops import peak_tflops

REPO = Path(__file__).resolve().parent.parent
TINY_TEACHER, TINY_STUDENT = "cifar_resnet10_w8", "cifar_resnet10_w4"


# ------------------------------------------------------------------ FLOPs


def _conv_and_linear_flops_by_hand(model: nn.Module, x: torch.Tensor) -> int:
    """2 x multiply-adds of every Conv2d / Linear, from output shapes seen by hooks."""
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        total += 2 * output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module, inputs, output):
        nonlocal total
        total += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def test_step_flops_are_consistent():
    flops = bench.count_step_flops(TINY_TEACHER, TINY_STUDENT, batch_size=4)
    step = flops["per_step"]
    parts = step["teacher_forward"] + step["student_forward"] + step["student_backward_and_connectors"]
    assert parts == step["total"]
    teacher = models.create(TINY_TEACHER).eval()
    student = models.create(TINY_STUDENT).eval()
    x = torch.randn(4, 3, 32, 32)
    assert step["teacher_forward"] == _conv_and_linear_flops_by_hand(teacher, x)
    assert step["student_forward"] == _conv_and_linear_flops_by_hand(student, x)
    # Backward costs about twice the forward (the first conv needs no input gradient).
    assert step["student_forward"] < step["student_backward_and_connectors"] < 4 * step["student_forward"]
    # Training the teacher: its forward plus a backward of about twice that.
    assert 2 * step["teacher_forward"] < flops["teacher_training_per_image"] * 4 <= 3 * step["teacher_forward"]
    # FLOPs grow linearly with the batch.
    double = bench.count_step_flops(TINY_TEACHER, TINY_STUDENT, batch_size=8)
    assert double["per_step"]["total"] == 2 * step["total"]
    assert double["per_image"] == flops["per_image"]


# ------------------------------------------------------------- projection


def test_projection_arithmetic():
    flops = bench.count_step_flops(TINY_TEACHER, TINY_STUDENT, batch_size=4)
    projection = bench.project_recipe(flops, assumed_utilisation=0.5, epochs=10, images_per_epoch=1000)
    total = flops["per_image"]["total"] * 10 * 1000
    assert projection["total_flops"] == pytest.approx(total)
    assert "estimate" in projection["label"].lower()
    for gpu, per_config in projection["gpus"].items():
        for e in per_config.values():
            assert e["peak_tflops"] == peak_tflops(gpu, e["precision"])
            assert e["hours_at_peak"] == pytest.approx(total / (e["peak_tflops"] * 1e12) / 3600)
            assert e["hours_estimate"] == pytest.approx(2 * e["hours_at_peak"])


# ---------------------------------------------------- reference-style step


def _tiny_pair(seed: int = 0):
    torch.manual_seed(seed)
    return models.create(TINY_STUDENT, num_classes=10), models.create(TINY_TEACHER, num_classes=10)


def _batch(n: int = 8):
    return torch.randn(n, 3, 16, 16), torch.randint(0, 10, (n,))


def test_reference_style_step_keeps_teacher_in_train_mode_and_computes_zero_weight_losses():
    student, teacher = _tiny_pair()
    connectors = build_connectors(student.stage_channels, teacher.stage_channels)
    optimizer = torch.optim.SGD(list(student.parameters()) + list(connectors.parameters()), lr=0.1)
    step = bench.ReferenceStyleStep(student, teacher, connectors, optimizer, torch.device("cpu"))
    teacher_weights = {k: v.clone() for k, v in teacher.state_dict().items() if "running" not in k and "num_batches" not in k}
    running_mean = teacher.stem[1].running_mean.clone()
    student_weight = student.fc.weight.clone()

    stats = step(*_batch(), {"ce": 0.0, "cd": 1.0, "gkd": 0.0})

    assert teacher.training and all(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    # Train-mode BatchNorm: the frozen teacher's running statistics drift.
    assert not torch.equal(teacher.stem[1].running_mean, running_mean)
    for k, v in teacher.state_dict().items():
        if k in teacher_weights:
            assert torch.equal(v, teacher_weights[k]), k
    # Every term was computed, the zero-weighted ones included, and they contribute 0.
    assert set(step.last_unweighted_losses) == {"ce", "cd", "gkd"}
    assert step.last_unweighted_losses["ce"].item() > 0
    assert stats[0].item() == 0.0 and stats[2].item() == 0.0 and stats[1].item() > 0
    # The zero-weighted CE still reaches the fc layer in the graph, with zero gradient;
    # the weight moves only by weight decay (none here) and momentum (none): unchanged.
    assert student.fc.weight.grad is not None
    assert torch.equal(student.fc.weight, student_weight)
    assert stats[-1].item() == 1.0 and stats[-2].item() == 8


def _decay_only_factor(steps: int, lr: float, momentum: float, weight_decay: float) -> float:
    """How SGD with momentum scales a weight whose loss gradient is exactly 0: w' = w - lr * buf,
    buf' = momentum * buf + weight_decay * w (torch's SGD, no dampening), from buf = 0."""
    w, buf = 1.0, 0.0
    for _ in range(steps):
        buf = momentum * buf + weight_decay * w
        w -= lr * buf
    return w


def test_zero_weighted_ce_lets_weight_decay_shrink_the_classifier_only_in_the_reference_style():
    """paper.md: the reference's 0 * CE keeps the classifier in the graph with a zero gradient, so
    weight decay shrinks it during the CD-only warm-up; cdlib skips the term and leaves it untouched."""
    cfg = _tiny_config(lr=0.1, momentum=0.9, weight_decay=0.05)
    warmup = {"ce": 0.0, "cd": 6.0, "gkd": 0.0}
    for build, shrinks in ((bench.steps.reference_step, True), (bench.steps.ours_step, False)):
        student, teacher = _tiny_pair()
        step, _ = build(student, teacher, cfg, torch.device("cpu"))
        before = student.fc.weight.detach().clone()
        for _ in range(3):
            step(*_batch(), warmup)
        if shrinks:
            factor = _decay_only_factor(3, cfg.lr, cfg.momentum, cfg.weight_decay)
            assert factor < 0.99
            assert torch.allclose(student.fc.weight, before * factor, rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(student.fc.weight, before)


def test_reference_style_gkd_is_finite_when_teacher_is_wrong_everywhere():
    student, teacher = _tiny_pair()
    connectors = build_connectors(student.stage_channels, teacher.stage_channels)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    step = bench.ReferenceStyleStep(student, teacher, connectors, optimizer, torch.device("cpu"))
    images, _ = _batch(4)
    with torch.no_grad():  # the teacher is in train mode, as in the step: batch statistics, the same logits
        wrong = (teacher(images).argmax(1) + 1) % 10
    stats = step(images, wrong, {"gkd": 1.0})
    assert step.last_unweighted_losses["gkd"].item() == 0.0
    assert torch.isfinite(stats).all()


def test_ours_keeps_teacher_in_eval_mode_and_skips_zero_weight_terms():
    student, teacher = _tiny_pair()
    distiller = Distiller(student, teacher, terms=terms.SCHEDULED)
    distiller.train()
    running_mean = teacher.stem[1].running_mean.clone()
    _, computed = distiller(*_batch(), {"ce": 0.0, "cd": 1.0, "gkd": 0.0})
    assert not teacher.training
    assert torch.equal(teacher.stem[1].running_mean, running_mean)
    assert set(computed) == {"cd"}


def test_pil_image_set_serves_the_same_images_normalised():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    tensors = data.TensorImageSet(images, torch.arange(6), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment=True)
    pil_set = bench.pil_image_set(tensors)
    assert len(pil_set) == 6
    image, label = pil_set[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 3


def test_reference_transform_reflect_pads_as_the_reference():
    """Every image the PIL pipeline serves is a 32x32 crop (at one of the 9 x 9 offsets, maybe
    flipped) of the image REFLECT-padded by 4 (the reference's Pad(4, padding_mode='reflect')),
    computed here independently with torch.nn.functional.pad; zero padding would not match."""
    images = torch.randint(1, 256, (1, 3, 32, 32), dtype=torch.uint8)
    tensors = data.TensorImageSet(images, torch.zeros(1, dtype=torch.long), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                                  augment=True)
    pil_set = bench.pil_image_set(tensors)
    padded = torch.nn.functional.pad((images.float() / 255 - 0.5) / 0.25, (4, 4, 4, 4), mode="reflect")[0]
    zero_padded = torch.nn.functional.pad((images.float() / 255 - 0.5) / 0.25, (4, 4, 4, 4), value=-2.0)[0]

    def offsets(source, image):
        return [(i, j, flip) for i in range(9) for j in range(9) for flip in (False, True)
                if torch.allclose((source[:, i:i + 32, j:j + 32].flip(-1) if flip else source[:, i:i + 32, j:j + 32]),
                                  image, atol=1e-5)]

    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, _ = pil_set[0]
        found = offsets(padded, image)
        assert len(found) == 1, f"seed {seed}: the crop matches {found} of the reflect-padded image"
        seen.add(found[0][:2])
        if found[0][:2] != (4, 4):
            assert not offsets(zero_padded, image), "a crop that reaches into the border must not be zero padding"
    assert len(seen) > 3, f"the crop offsets do not vary: {seen}"


# ------------------------------------------------------------- end to end


def _tiny_config(**changes) -> bench.BenchConfig:
    settings = dict(teacher=TINY_TEACHER, student=TINY_STUDENT, batch_size=8, device="cpu", dataset_size=64,
                    warmup_steps=1, rounds=2, steps_per_round=2, settle_steps=1, reference_workers=1,
                    measure_memory=False, threads=1)
    settings.update(changes)
    return bench.BenchConfig(**settings)


@pytest.fixture(scope="module")
def tiny_result():
    torch.manual_seed(0)
    return bench.run_benchmark(_tiny_config(), log=None)


def test_tiny_run_has_every_key_and_is_json(tiny_result, tmp_path):
    for key in bench.REQUIRED_RESULT_KEYS:
        assert key in tiny_result, key
    assert set(tiny_result["configurations"]) == set(bench.CONFIGURATIONS)
    for c in tiny_result["configurations"].values():
        for key in bench.REQUIRED_CONFIGURATION_KEYS:
            assert key in c, key
    machine = tiny_result["machine"]
    assert machine["torch_version"] == torch.__version__ and machine["cpu_count"] >= 1 and machine["device_name"]
    path = bench.save_result(tiny_result, bench.default_result_path(tiny_result, tmp_path))
    assert path.name.startswith("cpu-") and path.name.endswith(f"-{TINY_TEACHER}-to-{TINY_STUDENT}-b8.json")
    assert json.loads(path.read_text())["ratio_ours_over_reference"] == tiny_result["ratio_ours_over_reference"]


def test_tiny_run_numbers_are_consistent(tiny_result):
    cfg = tiny_result["config"]
    images_per_window = cfg["steps_per_round"] * cfg["batch_size"]
    for name, c in tiny_result["configurations"].items():
        assert len(c["images_per_s_rounds"]) == cfg["rounds"] == len(c["step_time_ms_rounds"])
        assert all(r > 0 and math.isfinite(r) for r in c["images_per_s_rounds"])
        assert c["images_per_s"] == pytest.approx(statistics.median(c["images_per_s_rounds"]))
        for rate, ms in zip(c["images_per_s_rounds"], c["step_time_ms_rounds"]):
            assert rate == pytest.approx(images_per_window / (ms / 1000 * cfg["steps_per_round"]))
        total_flops = tiny_result["flops"]["per_step"]["total"]
        assert c["achieved_tflops"] == pytest.approx(total_flops / (c["step_time_ms"] / 1000) / 1e12)
        assert c["peak_tflops"] is None and c["utilisation_of_peak"] is None  # a CPU has no entry
        assert c["losses_finite"], name
    ours, ref = tiny_result["configurations"]["ours"], tiny_result["configurations"]["reference_style"]
    assert tiny_result["ratio_ours_over_reference"] == pytest.approx(ours["images_per_s"] / ref["images_per_s"])
    assert len(tiny_result["paired_round_ratios"]) == cfg["rounds"]
    assert ours["teacher_mode"].startswith("eval") and ref["teacher_mode"].startswith("train")
    assert ours["data_workers"] == 0 and ref["data_workers"] == cfg["reference_workers"] == 1
    assert tiny_result["flops"]["per_step"]["total"] == tiny_result["flops"]["per_image"]["total"] * cfg["batch_size"]
    estimate = tiny_result["projection"]["flop_based_estimate"]
    assert (estimate["teacher"], estimate["student"]) == (bench.PAPER_TEACHER, bench.PAPER_STUDENT)
    assert tiny_result["projection"]["measured"] is None  # no GPU measurement on a CPU


def test_results_table_and_plot(tiny_result, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    bench.save_result(tiny_result, tmp_path / "a.json")
    (tmp_path / "not_a_result.json").write_text("{}")
    loaded = bench.load_results(tmp_path)
    assert len(loaded) == 1 and loaded[0]["_source"] == "a.json"
    table = bench.results_table(loaded)
    assert len(table) == 2 and set(table["configuration"]) == set(bench.CONFIGURATIONS)
    ax = bench.plot_throughput(table)
    assert ax.get_xlabel().startswith("images")
    assert "ours / reference-style" in bench.format_summary(tiny_result)
    assert "FLOP-based estimate" in bench.format_projection(tiny_result["projection"])


def test_memory_probe_reports_growth():
    grown = bench.measure_cpu_memory(_tiny_config(), "ours", steps=1)
    assert 0 <= grown < 4 * 2**30


def test_find_results_dir_searches_upwards(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    deep = tmp_path / "_build" / "stage" / "notebooks"
    deep.mkdir(parents=True)
    assert bench.find_results_dir(deep) == results


def test_committed_results_are_complete():
    folder = REPO / "benchmarks" / "results"
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    for path in paths:
        result = json.loads(path.read_text())
        missing = [k for k in bench.REQUIRED_RESULT_KEYS if k not in result]
        assert not missing, f"{path.name} lacks {missing}"
        ratio = result["configurations"]["ours"]["images_per_s"] / result["configurations"]["reference_style"]["images_per_s"]
        assert result["ratio_ours_over_reference"] == pytest.approx(ratio), path.name


def test_config_errors():
    with pytest.raises(ConfigError):
        _tiny_config(teacher="resnet9000").validate()
    with pytest.raises(ConfigError):
        _tiny_config(dataset_size=4).validate()
    with pytest.raises(ConfigError):
        _tiny_config(assumed_utilisation=0).validate()


def test_ablation_effects_are_paired_round_ratios():
    rounds = {"ours": [200.0, 100.0, 300.0], "reference_style": [100.0, 100.0, 100.0],
              "ours_step_pil_data": [100.0, 50.0, 150.0], "reference_step_device_data": [100.0, 100.0, 150.0]}
    result = {"configurations": {name: {"images_per_s_rounds": r} for name, r in rounds.items()}}
    effects = bench.ablation_effects(result)
    assert effects["data pipeline, with ours' step"] == 2.0           # 2, 2, 2
    assert effects["step, with DeviceLoader data"] == 2.0              # 2, 1, 2
    assert effects["data pipeline, with the reference-style step"] == 1.0  # 1, 1, 1.5
    assert bench.ablation_effects({"configurations": {k: rounds[k] and {"images_per_s_rounds": rounds[k]}
                                                      for k in bench.CONFIGURATIONS}}) == {}
