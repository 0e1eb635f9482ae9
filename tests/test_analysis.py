"""cdlib.analysis against hand computations on run folders, checkpoints and configs.

Fast: no training run; the run-folder tests write the files a run writes by hand.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from cdlib import analysis, checkpoint, recipes
from cdlib.connectors import build_connectors


# ----------------------------------------------------------------- configs


def test_scaled_recipe_moves_milestones_with_epochs():
    cfg = analysis.scaled_recipe("cifar100", epochs=50)
    assert cfg.epochs == 50 and cfg.lr_milestones == (15, 30, 40)  # 60, 120, 160 of 200, times 1/4
    assert analysis.scaled_recipe("cifar100").lr_milestones == recipes.get("cifar100").lr_milestones
    assert analysis.scaled_recipe("demo", epochs=30).lr_milestones == recipes.get("demo").lr_milestones
    assert analysis.scaled_recipe("demo", epochs=15, lr_milestones=[3]).lr_milestones == (3,)


def test_variant_gets_its_own_folder_and_the_shared_teacher(tmp_path):
    cfg = recipes.get("demo", run_dir=str(tmp_path / "demo"))
    with pytest.raises(Exception, match="does not exist yet"):
        analysis.variant(cfg, "schedule-cosine", schedule="cosine")
    teacher = tmp_path / "demo" / "teacher" / "model.pt"
    teacher.parent.mkdir(parents=True)
    teacher.write_bytes(b"x")
    v = analysis.variant(cfg, "schedule-cosine", schedule="cosine")
    assert v.run_dir == str(tmp_path / "demo-schedule-cosine")
    assert v.teacher_checkpoint == str(teacher) and v.schedule == "cosine"


def test_cli_command_lists_exactly_the_changed_settings():
    cfg = recipes.get("cifar100", epochs=20, lr_milestones=(6, 12), method="student,kd", resume=True, progress=False,
                      download=True, weights={"cd": 3.0})
    cmd = analysis.cli_command(cfg, "cifar100")
    assert cmd.startswith("cdlib distill --recipe cifar100 ")
    for part in ("--epochs 20", "--lr-milestones 6 12", "--method student,kd", "--resume", "--no-progress",
                 "--download", "--weights cd=3.0"):
        assert part in cmd, part
    assert "--batch-size" not in cmd and "gkd=" not in cmd
    assert analysis.cli_command(recipes.get("cifar100"), "cifar100") == "cdlib distill --recipe cifar100"
    wrapped = analysis.cli_command(cfg, "cifar100", width=40)
    lines = wrapped.split(" \\\n")
    assert len(lines) > 2 and all(ln.startswith("    --") for ln in lines[1:])
    assert " ".join(ln.strip() for ln in lines) == cmd  # the same command, only broken into lines


def test_method_labels():
    assert analysis.method_label("cd+gkd+edt") == "CD + GKD + EDT"
    assert analysis.method_label("student") == "student alone"
    assert analysis.method_label("kd+at") == "KD + AT"


# ----------------------------------------------------------------- loading


def test_load_connectors_from_a_training_checkpoint(tmp_path):
    torch.manual_seed(1)
    conns = build_connectors((4, 8), (16, 32))
    for c in conns:  # non-default BatchNorm statistics must survive the round trip
        c[1].running_mean.uniform_()
    trainable = {f"connectors.{k}": v for k, v in conns.state_dict().items()}
    trainable["student.fc.weight"] = torch.zeros(2, 2)
    checkpoint.atomic_save({"format": checkpoint.TRAINING_FORMAT, "trainable": trainable}, tmp_path / "checkpoint.pt")
    loaded = analysis.load_connectors(tmp_path)
    assert [(c.in_channels, c.out_channels) for c in loaded] == [(4, 16), (8, 32)]
    assert not loaded.training
    for a, b in zip(conns.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    checkpoint.atomic_save({"format": checkpoint.TRAINING_FORMAT, "trainable": {"student.x": torch.zeros(1)}},
                           tmp_path / "other.pt")
    with pytest.raises(Exception, match="no connectors"):
        analysis.load_connectors(tmp_path / "other.pt")


# ----------------------------------------------------------------- tables


def _rows(top1s, ips=100.0):
    return [{"epoch": e + 1, "test_top1": t, "test_top5": 99.0, "epoch_seconds": 2.0, "images_per_s": ips,
             "w_cd": 6.0, "loss_cd": 3.0, "loss_ce": 1.0} for e, t in enumerate(top1s)]


def test_metrics_frame_and_results_table(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows([50, 70, 80])))
    frame = analysis.metrics_frame({"a": _rows([40, 60]), "b": tmp_path / "b"})
    assert list(frame["run"]) == ["a", "a", "b", "b", "b"]
    assert (frame["raw_cd"] == 0.5).all()  # 3.0 / 6.0
    table = analysis.results_table({"a": _rows([40, 60]), "b": tmp_path / "b"}, teacher={"top1": 90.0, "top5": 99.5})
    assert list(table.index) == ["teacher", "a", "b"]
    assert table.loc["b", "top-1 %"] == 80 and table.loc["b", "Δ top-1"] == 20
    assert table.loc["teacher", "Δ top-1"] == 30  # over the last epoch of the first run, a
    # metrics alone do not say how long the teacher trained: no column rather than an empty (NaN) cell
    assert "train min" not in table and not table.isna().any().any()
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows([85, 90, 91, 89])))
    table = analysis.results_table({"a": _rows([40, 60]), "b": tmp_path / "b"}, teacher=tmp_path / "t")
    assert table.loc["teacher", "top-1 %"] == 89  # the last epoch
    assert table.loc["a", "train min"] == pytest.approx(2 * 2.0 / 60)
    assert table.loc["teacher", "train min"] == pytest.approx(4 * 2.0 / 60)
    assert not table.isna().any().any()


def test_cost_table_uses_the_median_speed():
    rows = _rows([1, 2, 3])
    for r, ips in zip(rows, (100.0, 10.0, 120.0)):
        r["images_per_s"] = ips
    cost = analysis.cost_table({"x": rows}, train_images=50_000, epochs=200)
    assert cost.loc["x", "images/s"] == 100.0
    assert cost.loc["x", "hours"] == pytest.approx(50_000 * 200 / 100 / 3600)


def test_paper_comparison_puts_errors_side_by_side():
    table = analysis.paper_comparison({"student": _rows([70.0]), "cd+gkd+edt": _rows([74.0, 76.5, 75.5])},
                                      teacher={"top1": 80.0, "top5": 95.0})
    assert table.loc["CD + GKD + EDT", "ours top-1 err %"] == pytest.approx(24.5)  # last epoch
    assert table.loc["CD + GKD + EDT", "ours best-epoch top-1 err %"] == pytest.approx(23.5)  # epoch 2
    assert table.loc["student alone", "ours best-epoch top-1 err %"] == pytest.approx(30.0)
    assert math.isnan(table.loc["teacher", "ours best-epoch top-1 err %"])  # metrics give no epochs
    assert table.loc["CD + GKD + EDT", "paper top-1 err %"] == 18.63
    assert table.loc["teacher", "ours top-5 err %"] == pytest.approx(5.0)
    assert math.isnan(table.loc["KD", "ours top-1 err %"])  # the paper has it, we did not run it


def test_connector_table_counts_parameters():
    table = analysis.connector_table("cifar_resnet10_w4", "cifar_resnet18_w16")
    assert list(table["student channels"]) == [4, 8, 16, 32]
    assert list(table["teacher channels"]) == [16, 32, 64, 128]
    # 1x1 conv C_S * C_T weights + BatchNorm scale and shift (2 C_T)
    assert list(table["connector parameters"]) == [s * t + 2 * t for s, t in zip([4, 8, 16, 32], [16, 32, 64, 128])]


def test_binomial_se():
    assert analysis.binomial_se(50.0, 100) == pytest.approx(5.0)
    assert analysis.binomial_se(100.0, 10) == 0.0
