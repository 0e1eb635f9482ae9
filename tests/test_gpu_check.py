"""benchmarks/gpu_check.py: its CPU --quick run (the GPU check's whole path, tiny sizes) gives one
complete, self-consistent JSON; projections are recomputed here from the speeds it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from repo_scripts import load_script

from cdlib import recipes, terms

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _load_script():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--output", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def _needs_teacher(method: str) -> bool:
    return terms.needs_teacher(recipes.parse_method(method))


def test_quick_check_writes_every_key_consistently(quick):
    result, stdout = quick
    module = _load_script()
    for key in module.REQUIRED_KEYS:
        assert key in result, key
    assert result["device"].startswith("CPU") and result["quick"] and result["models"] == "tiny"
    assert result["ratio"] == pytest.approx(result["ours_img_s"] / result["reference_img_s"], rel=1e-12)
    configurations = result["benchmark"]["configurations"]
    assert result["ours_img_s"] == configurations["ours"]["images_per_s"] > 0
    assert result["reference_img_s"] == configurations["reference_style"]["images_per_s"] > 0
    assert result["precision"] == {"ours": "fp32", "reference": "fp32"}
    assert "skipped" in result["compile"]
    assert result["peak_memory_mb"] > 50  # a process holding torch and two models
    assert set(result["seconds"]) == {"benchmark", "run_interrupt_resume", "projections"}
    assert "resume identical: True" in stdout


def test_quick_check_really_interrupted_and_compared(quick):
    result, _ = quick
    resume = result["resume"]
    stop = resume["interruption"]
    assert stop["signal"] == "SIGTERM" and stop["stopped"]
    # The checkpoint written on the signal is at the step it came after, mid-epoch 2.
    assert (stop["checkpoint_epoch"], stop["checkpoint_step"]) == (stop["sent_after"]["epoch"],
                                                                  stop["sent_after"]["step"]) == (2, 1)
    assert resume["identical"] == (resume["same_metrics"] and resume["same_weights"]) == result["resume_identical"]
    assert resume["resumed_final"] == resume["uninterrupted_final"] and resume["max_abs_weight_difference"] == 0
    assert result["run_top1"] == resume["uninterrupted_final"]["top1"]
    assert resume["epochs"] == 2 and resume["recipe"] == "cifar100-colab"


def test_quick_check_projections_are_images_over_measured_speed(quick):
    projected = quick[0]["projected"]
    paper = projected["paper_recipe"]
    epochs, train, test = paper["epochs"], paper["train_images"], paper["test_images"]
    assert (epochs, train, test) == (200, 50_000, 10_000)
    speed = paper["test_images_per_s"]
    teacher, (student,) = paper["teacher"], paper["students"]
    t_model = teacher["model"]
    s_model = next(m for m in speed if m != t_model)
    assert teacher["seconds"] == pytest.approx(epochs * (train / teacher["train_images_per_s"] + test / speed[t_model]))
    expected = epochs * (train / student["train_images_per_s"] + test / speed[s_model]) + test / speed[t_model]
    assert student["seconds"] == pytest.approx(expected)
    assert paper["total_hours"] == pytest.approx((teacher["seconds"] + student["seconds"]) / 3600)

    s = projected["chapter_speeds"]
    module = _load_script()
    chapters = module.timing.CHAPTERS
    assert set(projected["chapters"]) == set(chapters)
    for name, (_, methods) in chapters.items():
        teacher_s = s["epochs"] * (s["train_images"] / s["teacher_train_images_per_s"]
                                   + s["test_images"] / s["test_images_per_s"][s["teacher"]])
        total = teacher_s
        for method in methods:
            total += s["epochs"] * (s["train_images"] / s["train_images_per_s"][method]
                                    + s["test_images"] / s["test_images_per_s"][s["student"]])
            if _needs_teacher(method):
                total += s["test_images"] / s["test_images_per_s"][s["teacher"]]
        assert projected["chapters"][name]["seconds"] == pytest.approx(total), name


def test_bad_device_is_one_line(capsys):
    module = _load_script()
    assert module.main(["--device", "tpu9", "--quick", "--no-save"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu_check: error: unknown device 'tpu9'") and err.count("\n") == 1
    with pytest.raises(SystemExit):
        module.parse_args(["--train-images", "0"])
