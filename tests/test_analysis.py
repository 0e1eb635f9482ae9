"""cdlib.analysis against hand computations on tiny models, tensors and run folders.

Fast: no training run; the run-folder tests write the files a run writes by hand.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cdlib import analysis, checkpoint, models, recipes
from cdlib.connectors import build_connectors


class _Loader:
    """A list of (images, labels) batches, re-iterable like a DataLoader."""

    def __init__(self, images, labels, batch_size):
        self.batches = [(images[i : i + batch_size], labels[i : i + batch_size]) for i in range(0, len(labels), batch_size)]

    def __iter__(self):
        return iter(self.batches)


class _FixedLogits(nn.Module):
    """A 'model' whose logits for image i are row i of a table (the image holds i)."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()]


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = models.create("cifar_resnet10_w4", num_classes=5).eval()
    images = torch.randn(10, 3, 8, 8)
    labels = torch.arange(10) % 5
    return model, images, labels


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


# ----------------------------------------------------------------- attention


def test_channel_attention_equals_the_spatial_mean(tiny):
    model, images, labels = tiny
    att, got_labels = analysis.channel_attention_of(model, _Loader(images, labels, 4))
    with torch.no_grad():
        _, feats = model(images, return_features=True)
    assert [a.shape for a in att] == [(10, c) for c in model.stage_channels]
    for a, f in zip(att, feats):
        by_hand = f.sum(dim=(2, 3)) / (f.shape[2] * f.shape[3])
        torch.testing.assert_close(a, by_hand)
    assert torch.equal(got_labels, labels)


def test_channel_attention_through_connectors_and_max_samples(tiny):
    model, images, labels = tiny
    conns = build_connectors(model.stage_channels, (6, 7, 8, 9)).eval()
    att, got_labels = analysis.channel_attention_of(model, _Loader(images, labels, 4), conns, max_samples=7)
    with torch.no_grad():
        _, feats = model(images[:7], return_features=True)
        expected = [c(f).mean(dim=(2, 3)) for c, f in zip(conns, feats)]
    assert [a.shape[1] for a in att] == [6, 7, 8, 9]
    for a, e in zip(att, expected):
        torch.testing.assert_close(a, e)
    assert torch.equal(got_labels, labels[:7])


def test_attention_similarity_by_hand():
    s = [torch.tensor([[1.0, 0.0], [1.0, 1.0]])]
    t = [torch.tensor([[0.0, 1.0], [2.0, 2.0]])]
    (row,) = analysis.attention_similarity(s, t)
    assert row["stage"] == 1 and row["channels"] == 2
    assert row["cd"] == pytest.approx((1 + 1 + 1 + 1) / 4)  # squared differences 1, 1, 1, 1
    assert row["cosine"] == pytest.approx((0.0 + 1.0) / 2)  # orthogonal, then parallel
    with pytest.raises(ValueError):
        analysis.attention_similarity(s, [torch.zeros(2, 3)])


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


def test_fit_connectors_brings_attention_closer_and_leaves_the_student_alone(tiny):
    model, images, labels = tiny
    torch.manual_seed(3)
    teacher = models.create("cifar_resnet10_w8", num_classes=5).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = _Loader(images, labels, 5)
    t_att, _ = analysis.channel_attention_of(teacher, loader)
    torch.manual_seed(0)
    fresh = build_connectors(model.stage_channels, teacher.stage_channels).eval()
    start = sum(r["cd"] for r in analysis.attention_similarity(analysis.channel_attention_of(model, loader, fresh)[0], t_att))
    fitted = analysis.fit_connectors(model, teacher, loader, steps=60, lr=0.05)
    end = sum(r["cd"] for r in analysis.attention_similarity(analysis.channel_attention_of(model, loader, fitted)[0], t_att))
    assert end < 0.5 * start
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not fitted.training


# ----------------------------------------------------------------- teacher errors


def test_teacher_error_stats_equal_a_direct_count():
    torch.manual_seed(0)
    logits = torch.randn(50, 4)
    labels = torch.randint(0, 4, (50,))
    images = torch.arange(50).float().view(50, 1, 1, 1).expand(50, 3, 2, 2)
    teacher = _FixedLogits(logits)
    stats = analysis.teacher_error_stats(teacher, _Loader(images, labels, 8), temperature=2.0)
    wrong = sum(int(logits[i].argmax() != labels[i]) for i in range(50))
    assert stats["n"] == 50 and stats["wrong"] == wrong
    assert stats["error_rate"] == pytest.approx(100 * wrong / 50)
    assert int((~stats["correct"]).sum()) == wrong
    p = F.softmax(logits / 2.0, dim=1)
    torch.testing.assert_close(stats["p_true"], p[torch.arange(50), labels])
    torch.testing.assert_close(stats["p_pred"], p.max(1).values)
    torch.testing.assert_close(analysis.true_class_probability(logits, labels, 2.0), p[torch.arange(50), labels])


def test_teacher_wrong_batch_is_all_wrong():
    logits = torch.eye(4).repeat(3, 1) * 5  # image i predicts class i % 4
    labels = torch.tensor([0, 1, 3, 3, 0, 2, 3, 3, 1, 1, 0, 3])  # wrong at 2, 5, 6, 8, 10
    images = torch.arange(12).float().view(12, 1, 1, 1).expand(12, 3, 2, 2)
    teacher = _FixedLogits(logits)
    batch = analysis.teacher_wrong_batch(teacher, _Loader(images, labels, 4), size=4)
    assert batch["relabelled"] == 0 and len(batch["labels"]) == 4
    assert (batch["teacher_logits"].argmax(1) != batch["labels"]).all()
    big = analysis.teacher_wrong_batch(teacher, _Loader(images, labels, 4), size=8)  # only 5 real mistakes
    assert big["relabelled"] == 3 and (big["teacher_logits"].argmax(1) != big["labels"]).all()


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
    assert table.loc["a", "train min"] == pytest.approx(4.0 / 60)


def test_cost_table_uses_the_median_speed():
    rows = _rows([1, 2, 3])
    for r, ips in zip(rows, (100.0, 10.0, 120.0)):
        r["images_per_s"] = ips
    cost = analysis.cost_table({"x": rows}, train_images=50_000, epochs=200)
    assert cost.loc["x", "images/s"] == 100.0
    assert cost.loc["x", "hours"] == pytest.approx(50_000 * 200 / 100 / 3600)


def test_paper_comparison_puts_errors_side_by_side():
    table = analysis.paper_comparison({"student": _rows([70.0]), "cd+gkd+edt": _rows([75.5])},
                                      teacher={"top1": 80.0, "top5": 95.0})
    assert table.loc["CD + GKD + EDT", "ours top-1 err %"] == pytest.approx(24.5)
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
