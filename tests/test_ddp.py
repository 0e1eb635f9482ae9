"""Multi-process training with torchrun on the CPU (gloo): the same code and command as on GPUs.

Two processes train together; the checks are what DDP must guarantee and what the
trainer adds: identical weights on every rank, one writer of the run files, a teacher
trained once (by both processes together) and read by both after rank 0 wrote it, and
the ImageNet (ImageFolder + DataLoader + torchvision ResNet) path end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from cdlib import checkpoint, recipes, runfolder, train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
# One thread per process: two processes already fill the two cores of a small machine.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

DRIVER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from pathlib import Path

    from cdlib import recipes, train

    settings, out_dir = json.loads(sys.argv[1]), Path(sys.argv[2])
    results = train.run(recipes.get("demo", **settings))
    rank = int(os.environ["RANK"])
    report = {}
    for method, result in results.items():
        digest = hashlib.sha256()
        for name, tensor in sorted(result.model.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        report[method] = {"weights": digest.hexdigest(), "final": result.final, "teacher": result.teacher_metrics}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))
    """
)


def _torchrun(args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(TORCHRUN + args, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def test_two_processes_end_with_identical_weights_and_one_writer(tmp_path):
    run_dir = tmp_path / "run"
    settings = dict(
        data="synthetic", data_options={"num_classes": 4, "train_per_class": 16, "test_per_class": 5}, image_size=8,
        student="cifar_resnet10_w4", teacher="cifar_resnet10_w8", method="student,cd+gkd+edt", epochs=2,
        batch_size=8, device="cpu", progress=False, run_dir=str(run_dir),
    )
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    done = _torchrun([str(driver), json.dumps(settings), str(tmp_path)], cwd=tmp_path)

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for method in ("student", "cd+gkd+edt"):
        assert reports[0][method]["weights"] == reports[1][method]["weights"], f"{method}: ranks ended with different weights"
        assert reports[0][method]["final"] == reports[1][method]["final"], "every rank must report the same accuracy"
    assert reports[0]["cd+gkd+edt"]["teacher"] == reports[1]["cd+gkd+edt"]["teacher"]

    # Rank 0 alone writes: one metrics line per epoch, each summary printed once, the teacher trained once.
    for folder in ("teacher", "student", "cd_gkd_edt"):
        assert [r["epoch"] for r in runfolder.read_metrics(run_dir / folder)] == [1, 2], folder
        assert (run_dir / folder / "model.pt").is_file()
    assert done.stdout.count("[cd+gkd+edt] epoch   1/2") == 1
    assert done.stdout.count("training the teacher") == 1
    saved = checkpoint.safe_load(run_dir / "cd_gkd_edt" / "checkpoint.pt")
    assert saved["world_size"] == 2 and (saved["epoch"], saved["step"]) == (3, 0)
    # What rank 0 saved is what every rank trained.
    model = checkpoint.load_model(run_dir / "cd_gkd_edt" / "model.pt")
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.contiguous().numpy().tobytes())
    assert digest.hexdigest() == reports[0]["cd+gkd+edt"]["weights"]


def _fake_imagenet(root: Path, per_class_train: int = 8, per_class_val: int = 3) -> None:
    """An ImageFolder tree of 40x40 JPEGs: train/ and val/, two classes told apart by colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class_train), ("val", per_class_val)):
        for label, colour in (("n01", (200, 40, 40)), ("n02", (40, 40, 200))):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{label}_{i}.JPEG", quality=90)


def _calibrated_resnet34(path: Path) -> None:
    """An untrained ResNet34 teacher whose BatchNorm statistics match its activations.

    A teacher trained for a couple of steps keeps near-initial running statistics, and in
    eval mode its activations then grow block after block to ~1e19 logits: CD's squared
    differences overflow and training (rightly) stops as diverged. Averaging the statistics
    over a few batches gives a teacher that is untrained but numerically sane.
    """
    import torch
    from torch import nn

    from cdlib import models

    teacher = models.create("resnet34", num_classes=2)
    for module in teacher.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # a plain average over the batches seen
    teacher.train()
    with torch.no_grad():
        for _ in range(3):
            teacher(torch.randn(8, 3, 32, 32))
    checkpoint.save_model(teacher, path, "resnet34", 2)


def test_cdlib_distill_scales_out_with_torchrun_on_the_imagenet_path(tmp_path):
    data_root = tmp_path / "imagenet"
    _fake_imagenet(data_root)
    teacher_file = tmp_path / "resnet34.pt"
    _calibrated_resnet34(teacher_file)
    run_dir = tmp_path / "run"
    # The ImageNet recipe's teacher is torchvision's pretrained ResNet34; nothing may download
    # here, and with --teacher-checkpoint nothing does.
    done = _torchrun(
        ["-m", "cdlib", "distill", "--recipe", "imagenet", "--data-root", str(data_root), "--image-size", "32",
         "--teacher-checkpoint", str(teacher_file), "--method", "cd+gkd+edt", "--epochs", "1", "--batch-size", "4",
         "--num-workers", "0", "--device", "cpu", "--no-progress", "--run-dir", str(run_dir)],
        cwd=tmp_path,
    )
    assert "training the teacher" not in done.stdout
    assert done.stdout.count("[cd+gkd+edt] epoch   1/1") == 1
    assert done.stdout.count("cd+gkd+edt: test top-1") == 1, "the final report comes from rank 0 only"
    metrics = runfolder.read_metrics(run_dir / "cd_gkd_edt")
    assert len(metrics) == 1
    # 6 validation images, 3 per process, each counted once: accuracies are multiples of 1/6.
    saved = checkpoint.safe_load(run_dir / "cd_gkd_edt" / "checkpoint.pt")
    for top1 in (metrics[0]["test_top1"], saved["teacher_metrics"]["top1"]):
        assert abs(top1 * 6 / 100 - round(top1 * 6 / 100)) < 1e-9
    assert saved["world_size"] == 2 and saved["config"]["student"] == "resnet18" and saved["epoch"] == 2
    model = checkpoint.load_model(run_dir / "cd_gkd_edt" / "model.pt")
    assert type(model).__name__ == "TorchvisionResNet" and model.num_classes == 2


RESUME_DRIVER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from pathlib import Path

    from cdlib import recipes, train

    settings, report, stop = json.loads(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])

    def on_step(epoch, step):
        if [epoch, step] == stop:  # every process stops after the same step, as an agreed Ctrl-C does
            raise KeyboardInterrupt

    try:
        result = train.fit(recipes.get("demo", **settings), on_step=on_step)
    except KeyboardInterrupt:
        sys.exit(0)
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    if int(os.environ["RANK"]) == 0:
        report.write_text(json.dumps({"weights": digest.hexdigest(), "metrics": result.metrics}))
    """
)


def test_two_processes_resume_a_dataloader_run_mid_epoch_exactly(tmp_path):
    """The ImageNet-style path (DataLoader + EpochSampler) under torchrun: stop in the middle
    of epoch 2, resume, and end with the weights and metrics of an uninterrupted run."""
    teacher = train.fit(recipes.get(
        "demo", data="synthetic", data_options={"num_classes": 4, "train_per_class": 16, "test_per_class": 5},
        image_size=8, student="cifar_resnet10_w8", method="student", epochs=1, lr_milestones=(), batch_size=8,
        device="cpu", progress=False, run_dir=str(tmp_path / "teacher")))
    settings = dict(
        data="synthetic", data_options={"num_classes": 4, "train_per_class": 16, "test_per_class": 5}, image_size=8,
        student="cifar_resnet10_w4", teacher="cifar_resnet10_w8", teacher_checkpoint=str(teacher.model_path),
        method="cd+gkd+edt", epochs=3, batch_size=8, device="cpu", progress=False, data_on_device=False,
        num_workers=0,
    )
    driver = tmp_path / "driver.py"
    driver.write_text(RESUME_DRIVER)

    def torchrun(run_dir: Path, report: Path, stop, **extra) -> None:
        cfg = {**settings, "run_dir": str(run_dir), **extra}
        _torchrun([str(driver), json.dumps(cfg), str(report), json.dumps(stop)], cwd=tmp_path)

    torchrun(tmp_path / "straight", tmp_path / "straight.json", None)
    torchrun(tmp_path / "resumed", tmp_path / "unused.json", [2, 2])
    saved = checkpoint.safe_load(tmp_path / "resumed" / "checkpoint.pt")
    assert (saved["epoch"], saved["step"], saved["world_size"]) == (2, 2, 2)  # 64 images / 2 processes / 8 = 4 steps
    torchrun(tmp_path / "resumed", tmp_path / "resumed.json", None, resume=True)

    straight, resumed = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("straight", "resumed"))
    assert resumed["weights"] == straight["weights"], "resuming changed the trained weights"
    for a, b in zip(straight["metrics"], resumed["metrics"], strict=True):
        for key in ("train_loss", "loss_ce", "loss_cd", "loss_gkd", "train_top1", "test_top1"):
            assert a[key] == b[key], key
