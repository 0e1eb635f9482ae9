"""The committed CPU study (results/cpu-study, written by benchmarks/cpu_study.py): complete,
consistent with its own run files and with the family of contrasts the script declares, its
contrasts recomputed independently (scipy's paired t-test, Holm by hand), its design targets
met, and reproducible: one run trained again here lands within the study's own spread."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from repo_scripts import load_script

from cdlib import recipes, runfolder, seeds, stats, train

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results" / "cpu-study"
METHODS = ["teacher", "student", "kd", "gkd", "cd", "cd+kd", "cd+gkd", "cd+gkd+edt",
           "cd+gkd+edt (warm-up only)", "cd+gkd+edt (decay only)"]
SEEDS = list(range(12))


def _script():
    return load_script(ROOT / "benchmarks" / "cpu_study.py")


def _run_folder(method: str, seed: int) -> Path:
    return COMMITTED / runfolder.slug(method) / f"seed{seed}"


def test_committed_study_is_complete_and_matches_its_run_files():
    study = seeds.load_summary(COMMITTED)
    assert study.baseline == "student"
    per_seed = study.per_seed
    assert sorted(zip(per_seed.method, per_seed.seed)) == sorted((m, s) for m in METHODS for s in SEEDS)
    recipe = recipes.get("cpu-study")
    for row in per_seed.itertuples():
        folder = _run_folder(row.method, row.seed)
        metrics = runfolder.read_metrics(folder)
        config = json.loads((folder / "config.json").read_text())
        assert config["seed"] == row.seed and config["data"] == "digits"
        assert config["epochs"] == recipe.epochs and config["data_options"] == recipe.data_options
        assert len(metrics) == config["epochs"]
        assert row.top1 == pytest.approx(metrics[-1]["test_top1"], abs=1e-9)
        assert row.top1_best == pytest.approx(max(m["test_top1"] for m in metrics), abs=1e-9)
    recomputed = seeds.summarize(per_seed, "student")
    numeric = ["top1_mean", "top1_sd", "top1_ci_low", "top1_ci_high", "diff_mean", "diff_ci_low", "diff_ci_high"]
    pd.testing.assert_frame_equal(recomputed[numeric], study.summary[numeric], check_exact=False, atol=1e-6)
    assert list(study.summary["method"]) == METHODS
    assert not list(COMMITTED.rglob("*.pt"))
    provenance = json.loads((COMMITTED / "provenance.json").read_text())
    for key in ("command", "invocations", "cdlib_version", "git_commit", "torch_version", "cpu_model", "date",
                "wall_seconds", "runs"):
        assert provenance[key], key
    errors = pd.read_csv(COMMITTED / "teacher_errors.csv")
    assert errors.seed.tolist() == SEEDS
    for row in errors.itertuples():
        last = runfolder.read_metrics(_run_folder("teacher", row.seed))[-1]["test_top1"]
        assert row.test_error == pytest.approx(100 - last, abs=1e-3)


def test_the_arms_are_the_recipe_in_proportion():
    """The EDT arms differ from cd+gkd only in their schedule; the warm-up ends at the first LR drop."""
    recipe = recipes.get("cpu-study")
    assert recipe.lr_milestones == tuple(round(f * recipe.epochs) for f in (0.3, 0.6, 0.8))
    config = {m: json.loads((_run_folder(m, 0) / "config.json").read_text()) for m in METHODS[1:]}
    assert config["cd+gkd+edt"]["schedule"] == "paper-cifar100"
    assert config["cd+gkd+edt (warm-up only)"]["schedule"] == "paper-cifar100-warmup-only"
    assert config["cd+gkd+edt (decay only)"]["schedule"] == "paper-cifar100-decay-only"
    assert config["cd+gkd"]["method"] == "cd+gkd" and config["kd"]["method"] == "kd"
    # KD at GKD's temperature and weight: the two differ only in GKD's mask.
    assert config["kd"]["kd_temperature"] == config["gkd"]["gkd_temperature"]
    assert config["kd"]["weights"]["kd"] == config["gkd"]["weights"]["gkd"]
    metrics = runfolder.read_metrics(_run_folder("cd+gkd+edt", 0))
    warm = [m["epoch"] for m in metrics if m["w_ce"] == 0]
    first_drop = min(m["epoch"] for m in metrics if m["lr"] < metrics[0]["lr"])
    assert warm == list(range(1, first_drop))


def test_contrasts_are_the_declared_family_recomputed_independently():
    scipy_stats = pytest.importorskip("scipy.stats")
    table = pd.read_csv(COMMITTED / seeds.CONTRASTS_FILE)
    family = _script()._family()
    assert [(c.question, c.a, c.b) for c in family] == list(zip(table.question, table.a, table.b))
    top1 = pd.read_csv(COMMITTED / seeds.PER_SEED_FILE).pivot(index="seed", columns="method", values="top1")
    raw = [scipy_stats.ttest_rel(top1[c.a], top1[c.b]).pvalue for c in family]
    m = len(raw)
    order = sorted(range(m), key=raw.__getitem__)
    holm, running = [0.0] * m, 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * raw[i]))
        holm[i] = running
    for row, p, p_holm in zip(table.itertuples(), raw, holm):
        diffs = top1[row.a] - top1[row.b]
        half = scipy_stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / math.sqrt(len(diffs))
        assert row.n_pairs == len(SEEDS)
        assert row.diff_mean == pytest.approx(diffs.mean(), abs=1e-9)
        assert (row.ci_low, row.ci_high) == pytest.approx((diffs.mean() - half, diffs.mean() + half), abs=1e-7)
        assert row.p == pytest.approx(p, rel=1e-6) and row.p_holm == pytest.approx(p_holm, rel=1e-6)
        expected = ("resolved: better" if row.diff_mean > 0 else "resolved: worse") if p_holm < 0.05 else "not resolved"
        assert row.verdict == expected
        assert row.mde == pytest.approx(stats.minimum_detectable_effect(diffs.std(ddof=1), len(diffs)), rel=1e-9)


def test_committed_study_meets_the_design_targets_its_readme_says_it_meets():
    """The targets (results/cpu-study/README.md, *Design targets*): a teacher >= 5 points above the
    student alone, a median 95 % half-width of the declared contrasts <= 1.5 points, >= 10 seeds.
    Two targets are missed and the README says so with these numbers: the student's sd (<= 1.5
    wanted) and the teacher's error on augmented training images (>= 3 % wanted); they are
    checked here at the values stated there, so a changed study cannot silently differ from it."""
    summary = seeds.load_summary(COMMITTED).summary.set_index("method")
    table = pd.read_csv(COMMITTED / seeds.CONTRASTS_FILE)
    assert summary.loc["teacher", "top1_mean"] - summary.loc["student", "top1_mean"] >= 5
    assert ((table.ci_high - table.ci_low) / 2).median() <= 1.5
    assert set(table.n_pairs) == {len(SEEDS)} and len(SEEDS) >= 10
    readme = (COMMITTED / "README.md").read_text()
    sd = summary.loc["student", "top1_sd"]
    augmented = pd.read_csv(COMMITTED / "teacher_errors.csv").augmented_train_error.mean()
    assert sd > 1.5 and f"| student's seed-to-seed sd ≤ 1.5 points | 1.41 ✓ | {sd:.2f} ✗ |" in readme
    assert augmented < 3 and f"{augmented:.2f} % ✗ |" in readme


def test_readme_tables_are_the_committed_numbers():
    """Every row of the README's contrast and arm tables, rendered again from the CSVs."""
    readme = (COMMITTED / "README.md").read_text()
    for r in pd.read_csv(COMMITTED / seeds.CONTRASTS_FILE).itertuples():
        row = (f"| {r.question} | `{r.contrast}` | {r.n_pairs} | {r.diff_mean:+.2f} | [{r.ci_low:.2f}, "
               f"{r.ci_high:.2f}] | {r.p:.4f} | {r.p_holm:.4f} | {r.verdict} | {r.mde:.2f} |")
        assert row in readme, row
    for r in pd.read_csv(COMMITTED / "first-ten-seeds" / seeds.CONTRASTS_FILE).itertuples():
        row = (f"| `{r.contrast}` | {r.n_pairs} | {r.diff_mean:+.2f} | [{r.ci_low:.2f}, {r.ci_high:.2f}] | "
               f"{r.p_holm:.4f} | {r.verdict} |")
        assert row in readme, row
    for r in seeds.load_summary(COMMITTED).summary.itertuples():
        row = (f"| `{r.method}` | {r.n_seeds} | {r.top1_mean:.2f} | {r.top1_sd:.2f} | [{r.top1_ci_low:.2f}, "
               f"{r.top1_ci_high:.2f}] | {r.top1_best_mean:.2f} |")
        assert row in readme, row


@pytest.mark.slow
def test_student_seed0_reproduces_the_committed_accuracy(tmp_path):
    folder = _run_folder("student", 0)
    saved = json.loads((folder / "config.json").read_text())
    fields = {f.name for f in dataclasses.fields(recipes.RunConfig)}
    saved = {k: v for k, v in saved.items() if k in fields}
    saved["lr_milestones"] = tuple(saved["lr_milestones"])
    cfg = recipes.RunConfig(**saved).replace(run_dir=str(tmp_path / "student"), resume=False, progress=False, device="cpu")
    result = train.fit(cfg)
    committed = runfolder.read_metrics(folder)
    # Never bit-exact: CPUs that share a model name still differ in their SIMD kernels (another
    # AMD EPYC host diverged from epoch 1: 9.35 vs 9.58 %), and over a run of SGD a rounding
    # difference acts like another seed. So the tolerance is the study's seed-to-seed spread:
    # two draws differ by sqrt(2) sd on average; 4 sd (+ half a point of test-set granularity)
    # bounds that with room to spare, and still fails a run that does not learn the task.
    sd = seeds.load_summary(COMMITTED).summary.set_index("method").loc["student", "top1_sd"]
    assert math.isfinite(sd)
    assert abs(result.final["top1"] - committed[-1]["test_top1"]) <= 4 * sd + 0.5
