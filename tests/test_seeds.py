"""cdlib.seeds: seed strings, the comparison table against hand-computed statistics, CSV
columns, reuse of finished runs and resumption of interrupted ones, load_summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from cdlib import recipes, runfolder, seeds, train
from cdlib.errors import ConfigError


@pytest.mark.parametrize("text, expected", [("0-4", [0, 1, 2, 3, 4]), ("0,2,5", [0, 2, 5]), ("3", [3]),
                                            ("0-2,7", [0, 1, 2, 7]), (" 1 , 4 ", [1, 4]), ([2, 3], [2, 3]), (5, [5])])
def test_parse_seeds(text, expected):
    assert seeds.parse_seeds(text) == expected


@pytest.mark.parametrize("text", ["", "a", "0-", "-1", "4-2", "0,,1", "1.5", "0-2,1", [-1], [], ["0"]])
def test_bad_seeds_are_one_line_config_errors(text):
    with pytest.raises(ConfigError) as info:
        seeds.parse_seeds(text)
    assert "\n" not in str(info.value) and "seed" in str(info.value)


def _per_seed() -> pd.DataFrame:
    # The 3-seed example of test_stats, worked by hand there: student 70, 72, 74; kd 72, 75, 74.
    rows = [("student", 0, 70.0, 71.0), ("student", 1, 72.0, 72.5), ("student", 2, 74.0, 74.0),
            ("kd", 0, 72.0, 73.0), ("kd", 1, 75.0, 75.0), ("kd", 2, 74.0, 76.0),
            ("teacher", 0, 80.0, 80.0), ("teacher", 1, 81.0, 81.0), ("teacher", 2, 82.0, 82.0)]
    return pd.DataFrame([dict(zip(["method", "seed", "top1", "top1_best"], r), top5=99.0, train_seconds=1.0)
                         for r in rows])


def test_summarize_matches_hand_computation():
    summary = seeds.summarize(_per_seed(), baseline="student").set_index("method")
    assert list(summary.index) == ["student", "kd", "teacher"]
    s, kd, t = summary.loc["student"], summary.loc["kd"], summary.loc["teacher"]
    assert (s.n_seeds, s.top1_mean, s.top1_sd) == (3, 72.0, pytest.approx(2.0))
    assert (s.top1_ci_low, s.top1_ci_high) == (pytest.approx(67.032, abs=1e-3), pytest.approx(76.968, abs=1e-3))
    assert math.isnan(s.diff_mean) and not s.resolved
    assert kd.diff_mean == pytest.approx(5 / 3)
    assert (kd.diff_ci_low, kd.diff_ci_high) == (pytest.approx(-2.128, abs=1e-3), pytest.approx(5.461, abs=1e-3))
    assert not kd.resolved
    # Teacher - student: 10, 9, 8 -> mean 9, sd 1, half-width 4.3027 / sqrt(3) = 2.484.
    assert t.diff_mean == pytest.approx(9.0) and t.diff_ci_low == pytest.approx(6.516, abs=1e-3) and t.resolved
    assert kd.top1_best_mean == pytest.approx((73 + 75 + 76) / 3)
    text = seeds.format_table(summary.reset_index(), "student")
    assert "kd vs student: +1.67 points, 95% CI [-2.13, 5.46] contains 0: not resolved" in text
    assert "teacher vs student: +9.00 points, 95% CI [6.52, 11.48] excludes 0: resolved, better" in text
    assert "optimistic" in text


def test_summarize_pairs_by_seed_not_by_row_order():
    shuffled = _per_seed().sample(frac=1.0, random_state=3)
    summary = seeds.summarize(shuffled, baseline="student").set_index("method")
    assert summary.loc["kd", "diff_mean"] == pytest.approx(5 / 3)
    assert summary.loc["kd", "diff_ci_low"] == pytest.approx(-2.128, abs=1e-3)


def test_summarize_unknown_baseline():
    with pytest.raises(ConfigError, match="baseline 'cd'"):
        seeds.summarize(_per_seed(), baseline="cd")


def tiny(tmp_path: Path, **overrides) -> recipes.RunConfig:
    settings = dict(data="synthetic", data_root=None, data_options={"num_classes": 4, "train_per_class": 12, "test_per_class": 6},
                    image_size=8, student="cifar_resnet10_w4", teacher="cifar_resnet10_w8", method="student,kd", epochs=2,
                    batch_size=8, lr=0.05, lr_milestones=(2,), max_steps_per_epoch=3, device="cpu", num_workers=0,
                    progress=False, run_dir=str(tmp_path / "study"))
    settings.update(overrides)
    return recipes.get("demo", **settings)


def test_run_writes_tables_and_reuses_finished_runs(tmp_path, monkeypatch):
    cfg = tiny(tmp_path)
    study = seeds.run(cfg, seeds="0-1", plot=True)
    folder = Path(cfg.run_dir)
    per_seed = pd.read_csv(folder / "per_seed.csv")
    summary = pd.read_csv(folder / "summary.csv")
    assert list(per_seed.columns)[:4] == ["method", "seed", "top1", "top1_best"]
    assert list(summary.columns)[:9] == ["method", "n_seeds", "top1_mean", "top1_sd", "top1_ci_low", "top1_ci_high",
                                         "diff_mean", "diff_ci_low", "diff_ci_high"]
    assert sorted(zip(per_seed.method, per_seed.seed)) == [(m, s) for m in ("kd", "student", "teacher") for s in (0, 1)]
    assert (folder / "seed_comparison.png").stat().st_size > 1000
    for method in ("teacher", "student", "kd"):
        for seed in (0, 1):
            run_dir = folder / method / f"seed{seed}"
            metrics = runfolder.read_metrics(run_dir)
            row = per_seed[(per_seed.method == method) & (per_seed.seed == seed)].iloc[0]
            # The table's numbers are the runs' own: last epoch and best epoch of metrics.jsonl.
            assert row.top1 == pytest.approx(metrics[-1]["test_top1"])
            assert row.top1_best == pytest.approx(max(m["test_top1"] for m in metrics))
            assert json.loads((run_dir / "config.json").read_text())["seed"] == seed
    # The kd runs learned from their own seed's teacher.
    kd_config = json.loads((folder / "kd" / "seed1" / "config.json").read_text())
    assert kd_config["teacher_checkpoint"] == str(folder / "teacher" / "seed1" / "model.pt")
    # Seeds differ: the two students did not train identically.
    assert per_seed[per_seed.method == "student"].top1.nunique() == 2 or \
        runfolder.read_metrics(folder / "student" / "seed0") != runfolder.read_metrics(folder / "student" / "seed1")
    # Again: everything is reused, nothing trains, same tables.
    monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = seeds.run(cfg, seeds=[0, 1], plot=False)
    pd.testing.assert_frame_equal(again.per_seed, study.per_seed)
    loaded = seeds.load_summary(folder)
    assert loaded.baseline == "student"
    pd.testing.assert_frame_equal(loaded.per_seed, per_seed)
    assert loaded.summary["top1_mean"].tolist() == pytest.approx(study.summary["top1_mean"].tolist())


def test_run_refuses_a_finished_run_with_other_settings(tmp_path):
    cfg = tiny(tmp_path, method="student")
    seeds.run(cfg, seeds=[0], plot=False)
    with pytest.raises(ConfigError, match="other settings .*lr: 0.05 -> 0.1"):
        seeds.run(cfg.replace(lr=0.1), seeds=[0], plot=False)


def test_run_resumes_an_interrupted_seed(tmp_path):
    cfg = tiny(tmp_path, method="student")
    reference = seeds.run(cfg.replace(run_dir=str(tmp_path / "reference")), seeds=[0], plot=False)

    def stop(epoch, step):
        if (epoch, step) == (2, 1):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg.replace(run_dir=str(Path(cfg.run_dir) / "student" / "seed0")), on_step=stop)
    assert not (Path(cfg.run_dir) / "student" / "seed0" / "model.pt").exists()
    resumed = seeds.run(cfg, seeds=[0], plot=False)
    # Resumed exactly: the same final accuracy as the uninterrupted run, and its epoch-1 row kept.
    assert resumed.per_seed.top1.tolist() == reference.per_seed.top1.tolist()
    assert len(runfolder.read_metrics(Path(cfg.run_dir) / "student" / "seed0")) == 2


def test_variants_with_their_own_settings(tmp_path):
    cfg = tiny(tmp_path, method="student", epochs=1, lr_milestones=(1,))
    study = seeds.run(cfg, seeds=[0], methods=["student", {"student (lr 0.01)": {"method": "student", "lr": 0.01}}],
                      plot=False)
    assert study.per_seed.method.tolist() == ["student", "student (lr 0.01)"]
    saved = json.loads((Path(cfg.run_dir) / "student_lr_0.01" / "seed0" / "config.json").read_text())
    assert saved["lr"] == 0.01
    with pytest.raises(ConfigError, match="not among"):
        seeds.run(cfg, seeds=[0], baseline="kd", plot=False)


def test_load_summary_of_an_empty_folder(tmp_path):
    with pytest.raises(ConfigError, match="summary.csv"):
        seeds.load_summary(tmp_path)


def test_cli_seeds(tmp_path, capsys):
    from cdlib import cli

    common = ["distill", "--recipe", "demo", "--data", "synthetic", "--data-options", "num_classes=4", "train_per_class=12",
              "test_per_class=6", "--image-size", "8", "--student", "cifar_resnet10_w4", "--method", "student",
              "--epochs", "1", "--lr-milestones", "1", "--batch-size", "8", "--max-steps-per-epoch", "2", "--device", "cpu",
              "--no-progress", "--run-dir", str(tmp_path / "cli")]
    assert cli.main(common + ["--seeds", "0-x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cdlib: error: cannot read seeds '0-x'") and err.count("\n") == 1
    assert cli.main(common + ["--seeds", "0,1", "--baseline", "kd"]) == 2
    assert "baseline 'kd' is not among" in capsys.readouterr().err
    assert cli.main(common + ["--seeds", "0,1"]) == 0
    assert "student" in capsys.readouterr().out
    per_seed = pd.read_csv(tmp_path / "cli" / "per_seed.csv")
    assert per_seed.seed.tolist() == [0, 1] and (tmp_path / "cli" / "student" / "seed1" / "model.pt").exists()


def test_contrasts_pair_by_seed_test_and_guard_the_family_as_scipy_and_holm_by_hand_do():
    import pandas as pd

    scipy_stats = pytest.importorskip("scipy.stats")
    base = [70.0, 71.5, 69.0, 72.0, 70.5, 71.0]
    shifts = {"big": [2.0, 2.4, 1.8, 2.2, 2.1, 1.9], "small": [0.3, -0.2, 0.1, 0.4, -0.1, 0.2],
              "worse": [-1.0, -1.3, -0.9, -1.2, -0.8, -1.1]}
    rows = [{"method": "student", "seed": s, "top1": b} for s, b in enumerate(base)]
    rows += [{"method": m, "seed": s, "top1": b + d} for m, ds in shifts.items() for s, (b, d) in enumerate(zip(base, ds))]
    rows.append({"method": "big", "seed": 99, "top1": 0.0})  # a seed the baseline lacks: not paired, not used
    family = [seeds.Contrast("q1", m, "student") for m in shifts]
    table = seeds.contrasts(pd.DataFrame(rows), family).set_index("contrast")
    raw = {m: scipy_stats.ttest_rel([b + d for b, d in zip(base, ds)], base).pvalue for m, ds in shifts.items()}
    order = sorted(raw, key=raw.get)  # Holm by hand: m = 3
    holm, running = {}, 0.0
    for k, m in enumerate(order):
        running = max(running, min(1.0, (3 - k) * raw[m]))
        holm[m] = running
    for m, ds in shifts.items():
        row = table.loc[f"{m} - student"]
        assert row.n_pairs == 6 and row.diff_mean == pytest.approx(sum(ds) / 6)
        assert row.p == pytest.approx(raw[m], rel=1e-8) and row.p_holm == pytest.approx(holm[m], rel=1e-8)
    assert table.loc["big - student", "verdict"] == "resolved: better"
    assert table.loc["worse - student", "verdict"] == "resolved: worse"
    assert table.loc["small - student", "verdict"] == "not resolved"
    assert list(table.columns) == [c for c in seeds.CONTRAST_COLUMNS if c != "contrast"]
    with pytest.raises(ConfigError, match="names method\\(s\\) \\['nope'\\]"):
        seeds.contrasts(pd.DataFrame(rows), [seeds.Contrast("q", "nope", "student")])
    apart = pd.DataFrame(rows + [{"method": "later", "seed": 50, "top1": 1.0}])  # no seed shared with student
    with pytest.raises(ConfigError, match="'later - student' has no seed that both methods ran"):
        seeds.contrasts(apart, [seeds.Contrast("q", "later", "student")])
