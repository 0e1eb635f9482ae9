"""The `cdlib` command line: end to end in real processes, and every kind of bad input
answered with one line on stderr and exit status 2 (never a traceback)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cdlib import checkpoint, cli, recipes, runfolder, train

# One intra-op thread per process: on a small shared CPU a second one mostly waits for a busy core.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SMALL = ["--epochs", "2", "--max-steps-per-epoch", "3", "--image-size", "8", "--no-progress", "--device", "cpu"]



def _cdlib_script() -> str:
    script = shutil.which("cdlib") or str(Path(sys.executable).with_name("cdlib"))
    assert Path(script).exists(), "the `cdlib` console script is not installed (pip install -e .)"
    return script


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A model.pt of a cifar_resnet10_w4 for 4 classes (synthetic data)."""
    folder = tmp_path_factory.mktemp("small_model")
    cfg = recipes.get("demo", data="synthetic", data_options={"num_classes": 4, "train_per_class": 8, "test_per_class": 2},
                      image_size=8, student="cifar_resnet10_w4", method="student", epochs=1, batch_size=8,
                      max_steps_per_epoch=1, device="cpu", progress=False, run_dir=str(folder / "run"))
    return train.fit(cfg).model_path


# --------------------------------------------------------------------------- end to end


def test_distill_prints_the_comparison_and_evaluate_reproduces_it(tmp_path):
    run_dir = tmp_path / "demo"
    distill = subprocess.run([_cdlib_script(), "distill", "--recipe", "demo", *SMALL, "--run-dir", str(run_dir)],
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert distill.returncode == 0, distill.stderr
    assert "Traceback" not in distill.stderr
    table = distill.stdout[distill.stdout.index("method "):]
    for row in ("teacher cifar_resnet10_w16", "student alone", "kd", "cd+gkd+edt"):
        assert re.search(rf"^{re.escape(row)}\s+\d+\.\d\d\s+\d+\.\d\d", table, re.M), f"no table row for {row}:\n{table}"
    for folder in ("teacher", "student", "kd", "cd_gkd_edt"):
        assert len(runfolder.read_metrics(run_dir / folder)) == 2, folder
    reported = float(re.search(r"^cd\+gkd\+edt\s+(\d+\.\d\d)", table, re.M).group(1))

    model_file = run_dir / "cd_gkd_edt" / "model.pt"
    evaluate = subprocess.run([sys.executable, "-m", "cdlib", "evaluate", str(model_file), "--recipe", "demo",
                               "--image-size", "8", "--device", "cpu"], capture_output=True, text=True, env=ENV, timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr
    result = json.loads(evaluate.stdout)
    assert {"top1", "top5", "loss"} <= set(result)
    assert result["top1"] == pytest.approx(reported, abs=0.006)  # the table rounds to 2 decimals
    assert result["top1"] == pytest.approx(checkpoint.safe_load(model_file)["final"]["top1"], abs=1e-9)


def test_train_then_reuse_as_teacher_in_process(tmp_path, capsys):
    run_dir = tmp_path / "exp"
    assert cli.main(["train", "--recipe", "demo", *SMALL, "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "trained cifar_resnet10_w16" in out and (run_dir / "teacher" / "model.pt").is_file()
    # `cdlib distill` finds the teacher `cdlib train` made and does not train it again.
    assert cli.main(["distill", "--recipe", "demo", *SMALL, "--method", "kd", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "training the teacher" not in out and "[kd] epoch   2/2" in out
    # Another model than the teacher trains beside it, not over it.
    assert cli.main(["train", "--recipe", "demo", *SMALL, "--model", "cifar_resnet10_w4", "--run-dir", str(run_dir)]) == 0
    assert (run_dir / "cifar_resnet10_w4" / "model.pt").is_file()


def test_evaluate_takes_the_settings_of_the_run_that_wrote_the_file(capsys, tmp_path):
    run_dir = tmp_path / "exp"
    assert cli.main(["train", "--recipe", "demo", *SMALL, "--data-options", "train_per_class=20", "--model",
                     "cifar_resnet10_w4", "--run-dir", str(run_dir)]) == 0
    model = run_dir / "cifar_resnet10_w4" / "model.pt"
    reported = runfolder.read_metrics(model.parent)[-1]
    capsys.readouterr()
    # No --recipe (its default is CIFAR-100) and no data options: the run's config.json says digits, 20 per class.
    for argv in (["evaluate", str(model)], ["evaluate", "--data-options", "train_per_class=20", str(model)],
                 ["evaluate", str(model), "--recipe", "cifar100"]):
        assert cli.main(argv) == 0, argv
        result = json.loads(capsys.readouterr().out)
        assert (result["top1"], result["loss"]) == (reported["test_top1"], reported["test_loss"]), argv
        assert result["data"] == "digits" and result["settings_from"] == str(model.parent / "config.json")
    # An option given on the command line still wins over the run's; the run's other options stay (they merge).
    assert cli.main(["evaluate", "--data-options", "train_per_class=40", str(model)]) == 0
    assert json.loads(capsys.readouterr().out)["data_options"] == {"test_fraction": 0.5, "train_per_class": 40}


def test_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("demo", "cifar100", "imagenet", "cifar_resnet10_w4", "resnet34", "digits", "paper-cifar100", "cd"):
        assert word in out


@pytest.mark.parametrize("command", ["train", "distill", "evaluate"])
def test_help_documents_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0

    def flat(text: str) -> str:  # argparse re-wraps help text, sometimes after a hyphen
        return re.sub(r"\s+", " ", text).replace("- ", "-")

    out = flat(capsys.readouterr().out)
    skipped = {"train": {"student", "method", "teacher_checkpoint", "teacher_pretrained"}}.get(command, set())
    for f in dataclasses.fields(recipes.RunConfig):
        if f.name in skipped:
            continue
        assert f.metadata["meaning"], f"RunConfig.{f.name} does not say what it means"
        flag = "--" + f.name.replace("_", "-")
        assert flag in out, f"{command} --help lacks {flag}"
        assert flat(f.metadata["meaning"]) in out, f"{command} --help lacks the description of {flag}"
    assert "--recipe" in out


# --------------------------------------------------------------------------- bad input


def _one_line_error(capsys, argv) -> str:
    """Run the CLI in this process; it must exit 2 with exactly one 'cdlib: error:' line."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors exit from inside parse_args
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("cdlib: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def evil_checkpoint(tmp_path):
    """A torch.save'd file whose unpickling would run code that writes a marker file."""
    marker = tmp_path / "code_ran"

    class RunsCode:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('ran')",))

    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.MODEL_FORMAT, "model": "cifar_resnet10_w4", "payload": RunsCode()}, path)
    return path, marker


def test_bad_configuration_is_one_line(capsys, tmp_path):
    run = ["--run-dir", str(tmp_path / "r")]
    cases = [
        (["distill", "--recipe", "nope"], "unknown recipe 'nope'; known: cifar100, .*demo, imagenet"),
        (["distill", "--recipe", "demo", "--method", "cd+xyz"], "unknown method term"),
        (["distill", "--recipe", "demo", "--student", "resnet9000"], "unknown student model 'resnet9000'; known: .*cifar_resnet10_w4"),
        (["distill", "--recipe", "demo", "--teacher", "vgg"], "unknown teacher model 'vgg'"),
        (["distill", "--recipe", "demo", "--schedule", "sometimes"], "unknown EDT schedule 'sometimes'"),
        (["distill", "--recipe", "demo", "--weights", "xx=1"], r"unknown loss weight\(s\) \['xx'\]"),
        (["distill", "--recipe", "demo", "--weights", "cd=abc"], "--weights cd='abc': a weight must be a number"),
        (["distill", "--recipe", "demo", "--weights", "cd"], "--weights takes key=value pairs, got 'cd'"),
        (["distill", "--recipe", "demo", "--data-options", "train_per_class"], "--data-options takes key=value pairs"),
        (["train", "--recipe", "demo", "--data-options", "bogus=1", *SMALL, *run], "data set 'digits' does not take the option\\(s\\) bogus"),
        (["train", "--recipe", "demo", "--epochs", "abc"], "argument --epochs: invalid int value: 'abc'"),
        (["train", "--recipe", "demo", "--epochs", "0"], "epochs must be at least 1"),
        (["train", "--recipe", "demo", "--batch-size", "5000", *SMALL, *run], "batch size 5000 is larger than the"),
        (["train", "--recipe", "demo", "--data", "cifar100", "--data-root", "/nonexistent", *SMALL, *run], "CIFAR-100 not found"),
        (["train", "--recipe", "imagenet", "--data-root", str(tmp_path / "nothing"), *SMALL, *run], "ImageNet split folder"),
        (["train", "--recipe", "demo", "--amp", "fp16", "--device", "cpu", *run], "fp16 autocast is for GPUs"),
        (["distill"], None),  # the cifar100 recipe with no data folder here: a data error, still one line
    ]
    if not torch.cuda.is_available():
        cases.append((["train", "--recipe", "demo", "--device", "cuda", *run], "this machine has no CUDA GPU"))
    for argv, expected in cases:
        line = _one_line_error(capsys, argv)
        if expected is not None:
            assert re.search(expected, line), f"{argv}: {line}"


def test_bad_teacher_checkpoints_are_one_line(capsys, tmp_path, small_model, evil_checkpoint):
    distill = ["distill", "--recipe", "demo", "--method", "kd", *SMALL]
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(small_model.read_bytes()[: small_model.stat().st_size // 2])
    evil, marker = evil_checkpoint
    cases = [
        # a cifar_resnet10_w4 (4 classes) where the recipe's cifar_resnet18_w16 teacher (10 digits) is expected
        ([], small_model, r"holds a cifar_resnet10_w4 with 4 classes, but a cifar_resnet10_w16 with 10 classes"),
        # the right model, the wrong class count
        (["--teacher", "cifar_resnet10_w4"], small_model, r"cifar_resnet10_w4 with 4 classes, but a cifar_resnet10_w4 with 10"),
        ([], random_bytes, "truncated or corrupt"),
        ([], truncated, "truncated or corrupt"),
        ([], evil, "could run code, so it was refused"),
        ([], tmp_path / "missing.pt", "does not exist"),
    ]
    for i, (extra, teacher_file, expected) in enumerate(cases):
        line = _one_line_error(capsys, distill + extra + ["--teacher-checkpoint", str(teacher_file), "--run-dir", str(tmp_path / f"r{i}")])
        assert re.search(expected, line), f"{teacher_file.name}: {line}"
    assert not marker.exists(), "loading a checkpoint ran code from it"


def test_bad_checkpoints_to_evaluate_are_one_line(capsys, tmp_path, small_model, evil_checkpoint):
    evil, marker = evil_checkpoint
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04" + os.urandom(2000))  # looks like a zip (torch's format) at first
    # Outside its run folder the model is evaluated on the recipe's data (10 digits), which it does not fit.
    alone = tmp_path / "alone.pt"
    shutil.copy(small_model, alone)
    for path, expected in [(evil, "could run code"), (corrupt, "truncated or corrupt"),
                           (alone, "4 classes, but a cifar_resnet10_w4 with 10 classes")]:
        line = _one_line_error(capsys, ["evaluate", str(path), "--recipe", "demo", "--image-size", "8", "--device", "cpu"])
        assert re.search(expected, line), line
    assert not marker.exists()


def test_pretrained_imagenet_teacher_for_another_class_count_is_refused_before_any_download(capsys, tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (i * 90, 20, 200)).save(tmp_path / split / label / f"{i}.jpg")
    line = _one_line_error(capsys, ["distill", "--recipe", "imagenet", "--data-root", str(tmp_path), "--image-size", "32",
                                    "--method", "kd", "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
                                    "--device", "cpu", "--no-progress", "--run-dir", str(tmp_path / "run")])
    assert "pretrained resnet34 weights predict ImageNet's 1000 classes, but imagenet has 2" in line


def test_resuming_needs_resume_and_the_same_settings(capsys, tmp_path):
    argv = ["train", "--recipe", "demo", *SMALL, "--epochs", "1", "--model", "cifar_resnet10_w4", "--run-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert "--resume" in _one_line_error(capsys, argv)
    line = _one_line_error(capsys, argv + ["--resume", "--lr", "0.2"])
    assert "lr: 0.05 -> 0.2" in line


def test_errors_in_a_real_process_are_one_line_without_traceback(tmp_path, evil_checkpoint):
    evil, marker = evil_checkpoint
    for argv in (
        [_cdlib_script(), "evaluate", str(evil), "--recipe", "demo", "--image-size", "8", "--device", "cpu"],
        [sys.executable, "-m", "cdlib", "distill", "--recipe", "demo", "--student", "resnet9000"],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, env=ENV, timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("cdlib: error: "), done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "estimate", "distill"])
def test_ctrl_c_advises_resume_only_where_there_is_something_to_resume(command, capsys, monkeypatch, small_model):
    """Issue 24 item 10: evaluate and estimate save nothing, so `--resume` is no advice for them."""
    from cdlib import interrupt, parts
    from cdlib_bench import estimate

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(parts, "evaluate_model_file", stopped)
    monkeypatch.setattr(estimate, "recipe_time", stopped)
    monkeypatch.setattr(train, "run", stopped)
    monkeypatch.setattr(interrupt, "last_signal", lambda: None)  # an earlier test's SIGTERM must not name this stop
    monkeypatch.setattr(interrupt, "exit_status", lambda: 130)
    argv = {"evaluate": ["evaluate", str(small_model)], "estimate": ["estimate", "--recipe", "demo"],
            "distill": ["distill", "--recipe", "demo", "--method", "student"]}[command]
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("cdlib: stopped by Ctrl-C; "), err
    assert ("--resume" in err) == (command == "distill"), err
