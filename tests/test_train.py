"""cdlib.train: run files, reloading, EDT weights, teacher reuse, exact resume, divergence and Ctrl-C.

Every run is tiny (synthetic 8x8 images, 4-channel ResNet-10 student, a few steps) so
the whole file runs in well under a minute on a 2-core CPU.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cdlib.losses
from cdlib import checkpoint, errors, parts, recipes, runfolder, schedules, step, train
from cdlib.errors import CheckpointError, ConfigError


def tiny(tmp_path: Path, name: str = "run", **overrides) -> recipes.RunConfig:
    settings = dict(
        data="synthetic",
        data_root=None,
        data_options={"num_classes": 4, "train_per_class": 12, "test_per_class": 6},
        image_size=8,
        student="cifar_resnet10_w4",
        teacher="cifar_resnet10_w8",
        method="student",
        epochs=2,
        batch_size=8,
        lr=0.05,
        lr_milestones=(2,),
        max_steps_per_epoch=4,
        device="cpu",
        num_workers=0,
        progress=False,
        run_dir=str(tmp_path / name),
    )
    settings.update(overrides)
    if "lr_milestones" not in overrides:
        settings["lr_milestones"] = (min(2, settings["epochs"]),)  # decay after epoch 2, or after the only one
    return recipes.get("demo", **settings)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> str:
    """A trained (briefly) cifar_resnet10_w8 for the 4-class synthetic set."""
    folder = tmp_path_factory.mktemp("teacher")
    result = train.fit(tiny(folder, student="cifar_resnet10_w8", epochs=1, max_steps_per_epoch=6))
    return str(result.model_path)


def _model_state(path) -> dict:
    return checkpoint.safe_load(path)["state_dict"]


# --------------------------------------------------------------------------- run files


def test_a_run_writes_its_files_and_model_pt_reproduces_the_reported_accuracy(tmp_path, capsys):
    cfg = tiny(tmp_path)
    result = train.fit(cfg)
    run_dir = Path(cfg.run_dir)
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "model.pt"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "config.json").read_text())["student"] == "cifar_resnet10_w4"
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == cfg.epochs
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert {"test_top1", "test_top5", "test_loss", "train_loss", "train_top1", "lr", "loss_ce", "w_ce"} <= set(row)
    assert rows[0]["lr"] == rows[1]["lr"] == pytest.approx(0.05)  # the milestone (2) applies from epoch 3
    assert result.final["top1"] == rows[-1]["test_top1"]
    assert capsys.readouterr().out.count("[student] epoch") == 2

    model = checkpoint.load_model(run_dir / "model.pt")
    bundle = parts.load_data(cfg)
    loader = cdlib.data.make_loader(bundle.test, 7, train=False, on_device=False, num_workers=0)  # another batching
    again = step.evaluate(model, loader, torch.device("cpu"))
    assert again["top1"] == pytest.approx(rows[-1]["test_top1"], abs=1e-9)
    assert again["loss"] == pytest.approx(rows[-1]["test_loss"], rel=1e-5)
    # An independent count of the same accuracy.
    images = torch.stack([bundle.test[i][0] for i in range(len(bundle.test))])
    labels = torch.tensor([bundle.test[i][1] for i in range(len(bundle.test))])
    with torch.no_grad():
        by_hand = 100.0 * (model.eval()(images).argmax(1) == labels).float().mean().item()
    assert by_hand == pytest.approx(rows[-1]["test_top1"], abs=1e-4)
    # The training checkpoint's student is the same model.
    from_checkpoint = checkpoint.load_model(run_dir / "checkpoint.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(from_checkpoint.state_dict()[key], value)


def test_lr_schedule_and_edt_weights_follow_their_schedules(tmp_path, teacher_file):
    cfg = tiny(tmp_path, method="cd+gkd+edt", schedule="paper-cifar100", epochs=3, max_steps_per_epoch=2,
               teacher_checkpoint=teacher_file, lr_milestones=(2,), lr_gamma=0.5)
    rows = train.fit(cfg).metrics
    schedule = schedules.get("paper-cifar100", epochs=3)
    for row in rows:
        expected = schedule(row["epoch"])
        assert row["w_cd"] == expected["cd"] and row["w_ce"] == expected["ce"] and row["w_gkd"] == expected["gkd"]
        if expected["ce"] == 0:
            assert row["loss_ce"] == 0.0 and row["loss_gkd"] == 0.0, "a zero-weighted term contributes nothing"
    # The staircase by hand, CE/GKD warm-up (60 of 200 epochs) scaled to epoch 1.
    # Scaled to 3 epochs the staircase's milestones (60, 160 of 200) land on epoch 2 for both
    # steps: the first epoch always keeps the initial weight 6.
    assert [r["w_cd"] for r in rows] == pytest.approx([6.0, 6 * 0.9**2, 6 * 0.9**2])
    assert [r["w_ce"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.05, 0.025])  # x0.5 after epoch 2


def test_bf16_autocast_trains_and_saves_float32_weights(tmp_path, teacher_file):
    # The GPU default precision, exercised on the CPU: autocast around student and teacher,
    # losses computed in float32, weights kept (and saved) in float32.
    cfg = tiny(tmp_path, method="kd+cd", amp="bf16", epochs=1, max_steps_per_epoch=2, teacher_checkpoint=teacher_file)
    row = train.fit(cfg).metrics[0]
    assert all(math.isfinite(row[k]) for k in ("train_loss", "loss_kd", "loss_cd", "test_loss"))
    state = _model_state(Path(cfg.run_dir) / "model.pt")
    assert {v.dtype for v in state.values()} <= {torch.float32, torch.int64}


# --------------------------------------------------------------------------- the teacher


def test_run_trains_the_teacher_once_and_reuses_it(tmp_path, capsys):
    cfg = tiny(tmp_path, method="kd", epochs=1, max_steps_per_epoch=2)
    first = train.run(cfg)
    teacher_model = Path(cfg.run_dir) / "teacher" / "model.pt"
    assert teacher_model.is_file()
    assert "training the teacher" in capsys.readouterr().out
    stamp = teacher_model.stat().st_mtime_ns
    assert first["kd"].teacher_metrics is not None

    second = train.run(cfg.replace(method="cd"))
    out = capsys.readouterr().out
    assert "training the teacher" not in out and "[student]" not in out
    assert teacher_model.stat().st_mtime_ns == stamp
    assert second["cd"].teacher_metrics == pytest.approx(first["kd"].teacher_metrics)

    # A teacher trained for other data is not silently reused.
    with pytest.raises(ConfigError, match="trained with other settings.*image_size"):
        train.run(cfg.replace(method="at", image_size=16))


def test_ensure_teacher_trains_once_then_only_points_at_it(tmp_path, teacher_file, capsys):
    cfg = tiny(tmp_path, method="cd+gkd+edt", epochs=1, max_steps_per_epoch=2)
    ready = train.ensure_teacher(cfg)
    teacher_model = Path(cfg.run_dir) / "teacher" / "model.pt"
    assert ready.teacher_checkpoint == str(teacher_model) and teacher_model.is_file()
    assert ready.replace(teacher_checkpoint=None) == cfg  # nothing else changed
    assert checkpoint.load_model(teacher_model).stage_channels == (8, 16, 32, 64)  # the recipe's teacher, cifar_resnet10_w8
    assert "training the teacher" in capsys.readouterr().out
    stamp = teacher_model.stat().st_mtime_ns
    assert train.ensure_teacher(cfg) == ready
    assert "training the teacher" not in capsys.readouterr().out and teacher_model.stat().st_mtime_ns == stamp
    # A given checkpoint is used as it is: no folder, no training.
    given = tiny(tmp_path, "given", teacher_checkpoint=teacher_file)
    assert train.ensure_teacher(given) == given and not (Path(given.run_dir) / "teacher").exists()


@pytest.mark.parametrize("loss, warned", [(0.9, False), (math.log(4), False), (1.5, True), (math.inf, True),
                                         (math.nan, True)])
def test_a_teacher_worse_than_guessing_is_named(loss, warned, capsys):
    parts.warn_if_useless_teacher({"loss": loss, "top1": 20.0, "top5": 90.0}, num_classes=4)
    out = capsys.readouterr().out
    assert ("worse than guessing uniformly among 4 classes (1.39)" in out) == warned, out


def test_distilling_from_a_broken_teacher_warns_before_training(tmp_path, teacher_file, capsys):
    saved = checkpoint.safe_load(teacher_file)
    # Huge classifier weights: confidently wrong on every test image it misclassifies.
    saved["state_dict"] = {k: v * 1e4 if k.startswith("fc.") else v for k, v in saved["state_dict"].items()}
    broken = tmp_path / "broken.pt"
    torch.save(saved, broken)
    train.fit(tiny(tmp_path, method="kd", epochs=1, max_steps_per_epoch=1, teacher_checkpoint=str(broken)))
    out = capsys.readouterr().out
    assert "warning: the teacher's test loss" in out
    assert out.index("warning: the teacher") < out.index("[kd] epoch")


def test_fit_refuses_a_teacher_checkpoint_of_another_model_or_class_count(tmp_path, teacher_file):
    with pytest.raises(CheckpointError, match="cifar_resnet10_w8 with 4 classes.*cifar_resnet18_w16"):
        train.fit(tiny(tmp_path, "a", method="kd", teacher="cifar_resnet18_w16", teacher_checkpoint=teacher_file))
    options = {"num_classes": 3, "train_per_class": 12, "test_per_class": 6}
    with pytest.raises(CheckpointError, match="4 classes.*3 classes"):
        train.fit(tiny(tmp_path, "b", method="kd", data_options=options, teacher_checkpoint=teacher_file))
    with pytest.raises(ConfigError, match="needs a trained teacher"):
        train.fit(tiny(tmp_path, "c", method="kd"))


# --------------------------------------------------------------------------- resume


class _StopAt:
    def __init__(self, epoch: int, step: int) -> None:
        self.at = (epoch, step)

    def __call__(self, epoch: int, step: int) -> None:
        if (epoch, step) == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    "stop_at, on_device, workers",
    [((2, 3), True, 0), ((1, 5), True, 0), ((2, 2), False, 0), ((2, 3), False, 2), ((1, 5), False, 0)],
    ids=["mid-epoch", "epoch-boundary", "mid-epoch-dataloader", "mid-epoch-dataloader-workers",
         "epoch-boundary-dataloader"],
)
def test_an_interrupted_and_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path, teacher_file, stop_at,
                                                                              on_device, workers):
    common = dict(method="cd+gkd+edt", epochs=3, max_steps_per_epoch=5, teacher_checkpoint=teacher_file,
                  data_on_device=on_device, num_workers=workers)
    straight = train.fit(tiny(tmp_path, "straight", **common))

    cfg = tiny(tmp_path, "interrupted", **common)
    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg, on_step=_StopAt(*stop_at))
    saved = checkpoint.safe_load(Path(cfg.run_dir) / "checkpoint.pt")
    assert (saved["epoch"], saved["step"]) == stop_at
    assert not (Path(cfg.run_dir) / "model.pt").exists()
    resumed = train.fit(cfg.replace(resume=True))

    assert len(resumed.metrics) == len(straight.metrics) == 3
    for a, b in zip(straight.metrics, resumed.metrics):
        assert a["test_top1"] == b["test_top1"]
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1e-9)
        for key in ("train_loss", "loss_ce", "loss_cd", "loss_gkd", "train_top1"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    a_state = _model_state(straight.model_path)
    b_state = _model_state(resumed.model_path)
    assert a_state.keys() == b_state.keys()
    for key in a_state:
        assert torch.equal(a_state[key], b_state[key]), f"{key} differs after resuming"


def test_a_resumed_dataloader_epoch_loads_only_the_images_it_still_needs(tmp_path, teacher_file, monkeypatch):
    cfg = tiny(tmp_path, method="kd", epochs=1, teacher_checkpoint=teacher_file, data_on_device=False)
    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg, on_step=_StopAt(1, 2))
    loaded = []
    original = cdlib.data.TensorImageSet.__getitem__
    monkeypatch.setattr(cdlib.data.TensorImageSet, "__getitem__", lambda self, i: loaded.append(i) or original(self, i))
    train.fit(cfg.replace(resume=True))
    steps = min(48 // cfg.batch_size, cfg.max_steps_per_epoch)  # 4 classes x 12 training images, capped
    test_images = 4 * 6
    assert len(loaded) == (steps - 2) * cfg.batch_size + test_images  # the two trained steps are not loaded again


def test_milestones_that_never_take_effect_do_not_block_resuming(tmp_path):
    # Before milestones scaled with epochs, `--epochs 3` on the demo recipe saved its 20/26 milestones.
    cfg = tiny(tmp_path, epochs=3, lr_milestones=())
    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg, on_step=_StopAt(1, 2))
    path = Path(cfg.run_dir) / "checkpoint.pt"
    saved = checkpoint.safe_load(path)
    saved["config"]["lr_milestones"] = [20, 26]
    torch.save(saved, path)
    with pytest.raises(ConfigError, match=r"lr_milestones: \[\] -> \[2\]"):
        train.fit(cfg.replace(resume=True, lr_milestones=(2,)))  # a milestone that would act: refused
    assert len(train.fit(cfg.replace(resume=True)).metrics) == 3


def test_resume_guards(tmp_path, teacher_file):
    cfg = tiny(tmp_path, epochs=1, max_steps_per_epoch=2)
    train.fit(cfg)
    with pytest.raises(ConfigError, match="already holds a checkpoint"):
        train.fit(cfg)
    with pytest.raises(ConfigError, match=r"student: 'cifar_resnet10_w4' -> 'cifar_resnet10_w8'"):
        train.fit(cfg.replace(resume=True, student="cifar_resnet10_w8"))
    with pytest.raises(ConfigError, match=r"method: 'student' -> 'kd'"):
        train.fit(cfg.replace(resume=True, method="kd", teacher_checkpoint=teacher_file))
    with pytest.raises(ConfigError, match=r"lr: 0.05 -> 0.1"):
        train.fit(cfg.replace(resume=True, lr=0.1))
    # Machinery may change: a finished run resumes to the same result.
    again = train.fit(cfg.replace(resume=True, data_on_device=False))
    assert len(again.metrics) == 1

    (Path(cfg.run_dir) / "checkpoint.pt").write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train.fit(cfg.replace(resume=True))


# --------------------------------------------------------------------------- divergence


def test_a_non_finite_loss_stops_training_without_saving_the_bad_state(tmp_path, teacher_file, monkeypatch):
    cfg = tiny(tmp_path, method="kd", epochs=3, max_steps_per_epoch=3, teacher_checkpoint=teacher_file)
    checkpoint_path = Path(cfg.run_dir) / "checkpoint.pt"
    real_kd_loss = cdlib.losses.kd_loss
    calls = []

    def kd_loss_that_blows_up_in_epoch_2(*args, **kwargs):
        calls.append(1)
        value = real_kd_loss(*args, **kwargs)
        return value * float("nan") if len(calls) > 3 else value

    monkeypatch.setattr(cdlib.losses, "kd_loss", kd_loss_that_blows_up_in_epoch_2)
    after_epoch_1 = {}

    def remember_checkpoint(epoch, step):
        if (epoch, step) == (2, 1):
            after_epoch_1["bytes"] = checkpoint_path.read_bytes()

    with pytest.raises(errors.TrainingDiverged, match=r"loss term 'kd' became non-finite.*at step 1 of epoch 2 \(then also 'ce'\).*end of epoch 1"):
        train.fit(cfg, on_step=remember_checkpoint)
    assert checkpoint_path.read_bytes() == after_epoch_1["bytes"], "the diverged state must not overwrite the checkpoint"
    saved = checkpoint.safe_load(checkpoint_path)
    assert (saved["epoch"], saved["step"]) == (2, 0)
    assert all(math.isfinite(v.float().sum().item()) for v in saved["trainable"].values())
    checkpoint.load_model(checkpoint_path)  # loadable as a model too
    assert len(runfolder.read_metrics(cfg.run_dir)) == 1
    assert not (Path(cfg.run_dir) / "model.pt").exists()


def test_a_huge_learning_rate_diverges_with_a_clear_error(tmp_path):
    with pytest.raises(errors.TrainingDiverged, match="loss term 'ce' became non-finite"):
        train.fit(tiny(tmp_path, lr=1e12, momentum=0.0, epochs=1, max_steps_per_epoch=4))


def test_non_finite_or_negative_weights_are_rejected_up_front(tmp_path):
    with pytest.raises(ConfigError, match="finite numbers >= 0"):
        tiny(tmp_path, weights={"kd": float("inf")})
    with pytest.raises(ConfigError, match="finite numbers >= 0"):
        tiny(tmp_path, weights={"cd": -1.0})


def test_bad_data_options_and_oversized_batches_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not take the option.*bogus"):
        train.fit(tiny(tmp_path, data_options={"bogus": 1}))
    with pytest.raises(ConfigError, match="batch size 100 is larger than the 48 training images"):
        train.fit(tiny(tmp_path, batch_size=100))


# --------------------------------------------------------------------------- Ctrl-C


def test_sigint_saves_a_resumable_checkpoint_and_exits_130(tmp_path):
    run_dir = tmp_path / "sigint"
    command = [sys.executable, "-m", "cdlib", "train", "--recipe", "demo", "--model", "cifar_resnet10_w4",
               "--data", "synthetic", "--data-options", "num_classes=4", "train_per_class=100", "test_per_class=5",
               "--image-size", "8", "--batch-size", "8", "--epochs", "4", "--lr-milestones", "--device", "cpu",
               "--no-progress", "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # Ctrl-C at its default, as in a terminal (a backgrounded shell job inherits it ignored).
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "epoch   1/4" in line:
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (lines, out, err)
    assert "Traceback" not in err
    # The signal lands early in epoch 2 (state saved after the current step) or, on a slow
    # machine, before it starts (the end-of-epoch-1 state is already saved).
    assert re.search(r"interrupted (in|before) epoch 2", out) and "--resume" in err, out
    model_dir = run_dir / "cifar_resnet10_w4"
    saved = checkpoint.safe_load(model_dir / "checkpoint.pt")
    assert saved["epoch"] == 2
    assert len(runfolder.read_metrics(model_dir)) == 1

    finished = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert [r["epoch"] for r in runfolder.read_metrics(model_dir)] == [1, 2, 3, 4]
    assert (model_dir / "model.pt").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on a CPU needs a C++ compiler")
def test_compiled_training_matches_eager_and_saves_plain_weights(tmp_path, teacher_file):
    """`--compile` (torch.compile; inductor builds C++ kernels on a CPU, ~1 minute here).

    What compilation must preserve is the computation, not its rounding: inductor's kernels sum in
    another order than eager's, and which order depends on the host's SIMD width (AVX2 vs AVX-512).
    So the first step, taken from identical weights on an identical batch, must agree to float
    precision; later steps follow weights that SGD has already moved by slightly different amounts,
    and a host-dependent rounding difference grows with every step (seen: rel 1.6e-3 after 6 steps
    on one host, < 1e-4 on another). One step per epoch keeps that growth to two updates, and the
    looser bound still fails a dropped or mis-weighted term (each changes a loss by far more than 1 %).
    """
    common = dict(method="cd+gkd+edt", epochs=3, max_steps_per_epoch=1, teacher_checkpoint=teacher_file)
    eager = train.fit(tiny(tmp_path, "eager", **common))
    compiled = train.fit(tiny(tmp_path, "compiled", compile=True, **common))
    keys = ("train_loss", "loss_ce", "loss_cd", "loss_gkd", "test_loss")
    first_e, first_c = eager.metrics[0], compiled.metrics[0]
    for key in keys[:-1]:  # epoch 1's training losses: the first step, before any update
        assert first_e[key] == pytest.approx(first_c[key], rel=1e-4, abs=1e-6), key
    for a, b in zip(eager.metrics, compiled.metrics):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-2, abs=1e-4), key
    # The saved student is an ordinary model: no torch.compile wrapper prefixes, loadable without compiling.
    state = _model_state(compiled.model_path)
    assert state.keys() == _model_state(eager.model_path).keys()
    model = checkpoint.load_model(compiled.model_path)
    images = torch.randn(2, 3, 8, 8)
    assert model(images).shape == (2, 4)
    # How far the two drifted, for the log (pytest -s): the measured spread behind the tolerances.
    for a, b in zip(eager.metrics, compiled.metrics):
        print({k: abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in keys})


def test_resume_refuses_another_teacher_but_not_the_same_one_copied(tmp_path, teacher_file):
    common = dict(method="kd", epochs=2, max_steps_per_epoch=3, teacher_checkpoint=teacher_file)
    cfg = tiny(tmp_path, **common)
    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg, on_step=_StopAt(1, 2))
    other = train.fit(tiny(tmp_path, "other", student="cifar_resnet10_w8", epochs=1, max_steps_per_epoch=2, seed=1))
    with pytest.raises(ConfigError, match=r"cannot resume .*: it was trained with another teacher \(teacher: "
                                          r"'.*' \(SHA-256 \w{12}\) -> '.*other/model.pt' \(SHA-256 \w{12}\)\)"):
        train.fit(cfg.replace(resume=True, teacher_checkpoint=str(other.model_path)))
    copy = tmp_path / "copied_teacher.pt"
    shutil.copy(teacher_file, copy)
    resumed = train.fit(cfg.replace(resume=True, teacher_checkpoint=str(copy)))
    straight = train.fit(tiny(tmp_path, "straight", **common))
    a, b = _model_state(straight.model_path), _model_state(resumed.model_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.teacher_metrics == straight.teacher_metrics
