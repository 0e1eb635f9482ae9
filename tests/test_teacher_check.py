"""Teachers that check themselves: teacher.json written when a teacher is trained, and the
warnings when a reused teacher's file, data or accuracy no longer match it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cdlib import checkpoint, data, models, parts, recipes, runfolder, train


def tiny(tmp_path: Path) -> recipes.RunConfig:
    return recipes.get("demo", data="synthetic", data_root=None,
                       data_options={"num_classes": 4, "train_per_class": 12, "test_per_class": 6}, image_size=8,
                       student="cifar_resnet10_w4", teacher="cifar_resnet10_w8", method="kd", epochs=1, batch_size=8,
                       lr=0.05, lr_milestones=(1,), max_steps_per_epoch=4, device="cpu", num_workers=0, progress=False,
                       run_dir=str(tmp_path / "exp"))


def test_a_trained_teacher_records_itself_and_a_reuse_checks_quietly(tmp_path, capsys):
    cfg = tiny(tmp_path)
    train.ensure_teacher(cfg)
    folder = runfolder.teacher_dir(cfg.run_dir)
    saved = json.loads((folder / runfolder.TEACHER_RECORD_FILE).read_text())
    assert saved["test_top1"] == pytest.approx(runfolder.read_metrics(folder)[-1]["test_top1"])
    assert saved["sha256"] == runfolder.file_sha256(folder / "model.pt")
    assert saved["data_fingerprint"] == data.fingerprint(parts.load_data(cfg))
    capsys.readouterr()
    train.ensure_teacher(cfg)
    assert "warning" not in capsys.readouterr().out


def test_a_replaced_teacher_file_is_reported(tmp_path, capsys):
    cfg = tiny(tmp_path)
    train.ensure_teacher(cfg)
    folder = runfolder.teacher_dir(cfg.run_dir)
    torch.manual_seed(123)
    checkpoint.save_model(models.create("cifar_resnet10_w8", num_classes=4), folder / "model.pt", "cifar_resnet10_w8", 4)
    capsys.readouterr()
    train.ensure_teacher(cfg)
    out = capsys.readouterr().out
    assert "SHA-256 changed" in out
    problems = runfolder.verify_teacher(folder, cfg.replace(student=cfg.teacher, method="student"))
    assert any("SHA-256" in p for p in problems)


def test_changed_data_and_accuracy_are_reported(tmp_path, capsys):
    cfg = tiny(tmp_path)
    train.ensure_teacher(cfg)
    folder = runfolder.teacher_dir(cfg.run_dir)
    record = folder / runfolder.TEACHER_RECORD_FILE
    saved = json.loads(record.read_text())
    record.write_text(json.dumps({**saved, "data_fingerprint": "0" * 64, "test_top1": saved["test_top1"] + 10}))
    capsys.readouterr()
    train.ensure_teacher(cfg)
    out = capsys.readouterr().out
    assert "data fingerprint changed" in out and f"was {saved['test_top1'] + 10:.2f}%" in out
    assert "SHA-256" not in out


def test_a_teacher_without_record_gets_one(tmp_path, capsys):
    cfg = tiny(tmp_path)
    train.ensure_teacher(cfg)
    folder = runfolder.teacher_dir(cfg.run_dir)
    (folder / runfolder.TEACHER_RECORD_FILE).unlink()
    assert runfolder.verify_teacher(folder, cfg.replace(student=cfg.teacher, method="student")) == []
    assert (folder / runfolder.TEACHER_RECORD_FILE).exists()


def test_data_fingerprint_follows_the_data():
    a = data.fingerprint(data.load("synthetic", image_size=8, num_classes=3, train_per_class=5, test_per_class=2))
    b = data.fingerprint(data.load("synthetic", image_size=8, num_classes=3, train_per_class=5, test_per_class=2))
    c = data.fingerprint(data.load("synthetic", image_size=8, num_classes=3, train_per_class=5, test_per_class=2, seed=1))
    d = data.fingerprint(data.load("synthetic", image_size=8, num_classes=3, train_per_class=6, test_per_class=2))
    assert a == b and len({a, c, d}) == 3 and len(a) == 64
