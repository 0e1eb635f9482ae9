"""cdlib.analysis against hand computations on run folders, checkpoints and configs.

Fast: no training run; the run-folder tests write the files a run writes by hand.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from pathlib import Path

import pytest
import torch

from cdlib import analysis, checkpoint, recipes
from cdlib.connectors import build_connectors

# ----------------------------------------------------------------- configs


def test_scaled_recipe_moves_milestones_with_epochs():
    cfg = analysis.scaled_recipe("cifar100", epochs=50)
    assert cfg.epochs == 50 and cfg.lr_milestones == (15, 30, 40)  # 60, 120, 160 of 200, times 1/4
    assert analysis.scaled_recipe("cifar100").lr_milestones == recipes.get("cifar100").lr_milestones
    assert analysis.scaled_recipe("demo", epochs=20).lr_milestones == recipes.get("demo").lr_milestones
    assert analysis.scaled_recipe("demo", epochs=15, lr_milestones=[3]).lr_milestones == (3,)


def test_scaled_recipe_keeps_the_recipes_batch_size_unless_given():
    assert analysis.scaled_recipe("cifar100-colab", batch_size=None).batch_size == recipes.get("cifar100-colab").batch_size
    assert analysis.scaled_recipe("cifar100-colab", batch_size=16).batch_size == 16


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


# ----------------------------------------------------------------- the chapters' study sections
#
# Chapters 01-04 read committed studies (results/cpu-study, results/reference-switches) in cells
# whose ids contain "-study-" or "-switch-". They run here as the book runs them, without
# training: once from notebooks/ (the study is at ../results, as in _build/stage/notebooks/)
# and once from a folder without it (a lone copy on Colab), where every glue key the page
# uses must still be defined (the book is built with -W: a missing key fails the build).

REPO = Path(__file__).resolve().parent.parent
STUDY_CHAPTERS = ["01_channel_attention", "02_gkd_vs_kd", "03_edt_schedules", "04_reproduce_cifar100"]
_GLUE_KEY = re.compile(r"\{glue:text\}`([A-Za-z0-9_]+)")


def _study_cells(stem):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(REPO / "notebooks" / f"{stem}.ipynb", as_version=4)
    chosen = [c for c in nb.cells if "-study-" in c.get("id", "") or "-switch-" in c.get("id", "")]
    code = [c.source for c in chosen if c.cell_type == "code"]
    keys = {k for c in chosen if c.cell_type == "markdown" for k in _GLUE_KEY.findall(c.source)}
    return code, keys


def _run_cells(code, cwd, monkeypatch):
    """Run the cells in one namespace with cwd ``cwd``; return what they glued."""
    pytest.importorskip("pandas")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cdlib import viz

    glued = {}
    monkeypatch.setattr(viz, "glue", lambda key, value, display=False: glued.__setitem__(key, value))
    monkeypatch.chdir(cwd)
    namespace = {"viz": viz, "analysis": analysis}
    for source in code:
        exec(compile(source, "<cell>", "exec"), namespace)
    plt.close("all")
    return glued, namespace


def test_execute_notebooks_stages_the_results_folder():
    sys.path.insert(0, str(REPO / "ci"))
    try:
        import execute_notebooks
    finally:
        sys.path.pop(0)
    assert "results" in execute_notebooks.STAGE_COPY
    assert (REPO / "results" / "cpu-study" / "summary.csv").is_file()


@pytest.mark.parametrize("stem", STUDY_CHAPTERS)
def test_study_sections_glue_every_key_without_the_study(stem, tmp_path, monkeypatch):
    code, keys = _study_cells(stem)
    assert code and keys, f"{stem} has no study section"
    (tmp_path / "notebooks").mkdir()
    glued, _ = _run_cells(code, tmp_path / "notebooks", monkeypatch)
    assert keys <= set(glued), f"{stem}: keys used but not glued without the study: {sorted(keys - set(glued))}"
    assert all(isinstance(glued[k], str) and glued[k] for k in keys)


def _t_interval(xs):
    """Mean and 95 % t-interval of five numbers, written out (t with 4 degrees of freedom: 2.7764451)."""
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = 2.7764451052 * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def _committed_family():
    """The committed study's contrasts recomputed from per_seed.csv with scipy and Holm by hand:
    contrast -> (mean, low, high, p_holm, verdict)."""
    import csv

    scipy_stats = pytest.importorskip("scipy.stats")
    with open(REPO / "results" / "cpu-study" / "per_seed.csv", newline="") as f:
        top1 = {}
        for r in csv.DictReader(f):
            top1.setdefault(r["method"], {})[int(r["seed"])] = float(r["top1"])
    with open(REPO / "results" / "cpu-study" / "contrasts.csv", newline="") as f:
        pairs = [(r["a"], r["b"]) for r in csv.DictReader(f)]
    raw, out = [], {}
    for a, b in pairs:
        seeds_ = sorted(top1[a])
        d = [top1[a][s] - top1[b][s] for s in seeds_]
        mean = sum(d) / len(d)
        half = scipy_stats.t.ppf(0.975, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
        raw.append(scipy_stats.ttest_rel([top1[a][s] for s in seeds_], [top1[b][s] for s in seeds_]).pvalue)
        out[f"{a} - {b}"] = [mean, mean - half, mean + half]
    running = 0.0
    for k, i in enumerate(sorted(range(len(raw)), key=raw.__getitem__)):
        running = max(running, min(1.0, (len(raw) - k) * raw[i]))
        name = f"{pairs[i][0]} - {pairs[i][1]}"
        mean = out[name][0]
        verdict = ("resolved: better" if mean > 0 else "resolved: worse") if running < 0.05 else "not resolved"
        out[name] += [running, verdict]
    return out


@pytest.mark.parametrize("stem, glued_contrasts", [
    ("01_channel_attention", {"study_cd": "cd - student"}),
    ("02_gkd_vs_kd", {"study_gkd": "gkd - kd", "study_gkd_cd": "cd+gkd - cd+kd"}),
    ("03_edt_schedules", {"study_edt": "cd+gkd+edt - cd+gkd",
                          "study_warmup": "cd+gkd+edt (warm-up only) - cd+gkd",
                          "study_decay": "cd+gkd+edt (decay only) - cd+gkd"}),
])
def test_chapters_state_the_committed_contrasts_as_recomputed_independently(stem, glued_contrasts, monkeypatch):
    family = _committed_family()
    code, keys = _study_cells(stem)
    glued, ns = _run_cells(code, REPO / "notebooks", monkeypatch)
    assert keys <= set(glued)
    for key, contrast in glued_contrasts.items():
        mean, low, high, p_holm, verdict = family[contrast]
        said = glued[key]
        assert said.startswith(contrast) and f"{mean:+.2f} points" in said, said
        assert f"[{low:.2f}, {high:.2f}]" in said and f"Holm-adjusted p = {p_holm:.3f}" in said, said
        assert said.endswith(verdict), said
    # The chapter's table holds exactly its own question's contrasts.
    assert set(ns["mine"].index) == set(glued_contrasts.values())


def test_chapter_04_judges_each_switch_by_its_paired_interval(tmp_path, monkeypatch):
    import pandas as pd

    from cdlib import seeds

    base = [68.0, 70.5, 66.0, 69.0, 71.0]
    shifts = {"teacher_bn_train": [2.1, 1.9, 2.4, 2.0, 1.6], "pad_mode=zeros": [0.5, -0.8, 0.2, -0.1, 0.3]}
    rows = [{"method": "teacher", "seed": s, "top1": 80.0 + s / 10, "top1_best": 80.5, "top5": 99.0, "train_seconds": 1.0}
            for s in range(5)]
    rows += [{"method": "cd+gkd+edt", "seed": s, "top1": b, "top1_best": b + 0.25 + s / 100, "top5": 97.0,
              "train_seconds": 1.0} for s, b in enumerate(base)]
    rows += [{"method": name, "seed": s, "top1": b + d, "top1_best": b + d, "top5": 97.0, "train_seconds": 1.0}
             for name, ds in shifts.items() for s, (b, d) in enumerate(zip(base, ds))]
    folder = tmp_path / "results" / "reference-switches"
    folder.mkdir(parents=True)
    per_seed = pd.DataFrame(rows)
    per_seed.to_csv(folder / "per_seed.csv", index=False)
    seeds.summarize(per_seed, "cd+gkd+edt").to_csv(folder / "summary.csv", index=False)
    (tmp_path / "notebooks").mkdir()
    code, keys = _study_cells("04_reproduce_cifar100")
    glued, ns = _run_cells(code, tmp_path / "notebooks", monkeypatch)
    assert keys <= set(glued)
    table = ns["switches"]
    assert list(table.index) == ["cd+gkd+edt (default)", "teacher_bn_train", "pad_mode=zeros", "report_best_epoch"]
    for name, ds in [*shifts.items(), ("report_best_epoch", [0.25 + s / 100 for s in range(5)])]:
        mean, low, high = _t_interval(ds)
        assert table.loc[name, "vs default"] == f"{mean:+.2f}" and table.loc[name, "95 % CI"] == f"[{low:.2f}, {high:.2f}]"
        assert table.loc[name, "verdict"] == ("resolved: higher" if low > 0 else "not resolved"), name
    assert "Resolved: teacher_bn_train" in glued["switches_verdict"] and "pad_mode=zeros." in glued["switches_verdict"]


# ----------------------------------------------------------------- paired bootstrap


def test_paired_bootstrap_ratio_brackets_the_ratio_and_is_reproducible():
    gen = torch.Generator().manual_seed(1)
    b = torch.rand(400, generator=gen) + 0.5
    a = 2 * b + 0.05 * torch.randn(400, generator=gen)
    out = analysis.paired_bootstrap_ratio(a, b, seed=3)
    assert out["n"] == 400
    assert out["ratio"] == pytest.approx(float(a.mean() / b.mean()))
    assert out["low"] < out["ratio"] < out["high"]
    assert 1.9 < out["low"] and out["high"] < 2.1  # paired: the common factor cancels
    assert analysis.paired_bootstrap_ratio(a, b, seed=3) == out


def test_paired_bootstrap_ratio_of_equal_samples_is_exactly_one():
    x = torch.arange(1.0, 11.0)
    out = analysis.paired_bootstrap_ratio(x, x.clone())
    assert out["ratio"] == out["low"] == out["high"] == 1.0


def test_paired_bootstrap_ratio_refuses_unpaired_samples():
    from cdlib.errors import ConfigError

    with pytest.raises(ConfigError):
        analysis.paired_bootstrap_ratio(torch.ones(3), torch.ones(4))
