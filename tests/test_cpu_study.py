"""The committed CPU study (results/cpu-study, written by benchmarks/cpu_study.py): complete,
consistent with its own run files, and reproducible — the student of seed 0 trained again here
ends within the study's own seed-to-seed spread of the committed accuracy."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from cdlib import recipes, seeds, train

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results" / "cpu-study"
METHODS = ["teacher", "student", "kd", "cd", "cd+gkd", "cd+gkd+edt", "cd+gkd+edt (cosine)"]
SEEDS = [0, 1, 2, 3, 4]


def _run_folder(method: str, seed: int) -> Path:
    return COMMITTED / seeds._slug(method) / f"seed{seed}"


def test_committed_study_is_complete_and_matches_its_run_files():
    study = seeds.load_summary(COMMITTED)
    assert study.baseline == "student"
    per_seed = study.per_seed
    assert sorted(zip(per_seed.method, per_seed.seed)) == sorted((m, s) for m in METHODS for s in SEEDS)
    for row in per_seed.itertuples():
        folder = _run_folder(row.method, row.seed)
        metrics = train.read_metrics(folder)
        config = json.loads((folder / "config.json").read_text())
        assert config["seed"] == row.seed and config["data"] == "digits"
        assert len(metrics) == config["epochs"]
        assert row.top1 == pytest.approx(metrics[-1]["test_top1"], abs=1e-9)
        assert row.top1_best == pytest.approx(max(m["test_top1"] for m in metrics), abs=1e-9)
    # The summary is what cdlib.seeds computes from the per-seed table.
    recomputed = seeds.summarize(per_seed, "student")
    numeric = ["top1_mean", "top1_sd", "top1_ci_low", "top1_ci_high", "diff_mean", "diff_ci_low", "diff_ci_high"]
    pd.testing.assert_frame_equal(recomputed[numeric], study.summary[numeric], check_exact=False, atol=1e-6)
    assert list(study.summary["method"]) == METHODS
    # No checkpoints or model files in the commit.
    assert not list(COMMITTED.rglob("*.pt"))
    provenance = json.loads((COMMITTED / "provenance.json").read_text())
    for key in ("command", "cdlib_version", "git_commit", "torch_version", "cpu_model", "date", "wall_seconds"):
        assert provenance[key], key
    errors = pd.read_csv(COMMITTED / "teacher_errors.csv")
    assert errors.seed.tolist() == SEEDS
    # The teacher's test error agrees with its own last epoch.
    for row in errors.itertuples():
        last = train.read_metrics(_run_folder("teacher", row.seed))[-1]["test_top1"]
        assert row.test_error == pytest.approx(100 - last, abs=1e-3)


def test_committed_study_meets_its_design_targets():
    """What the recipe was chosen for (benchmarks/cpu_study.py): a teacher that is >= 3 points better
    than the student alone, and wrong on >= 3 % of augmented training images, over 5 seeds."""
    summary = seeds.load_summary(COMMITTED).summary.set_index("method")
    assert summary.loc["teacher", "top1_mean"] - summary.loc["student", "top1_mean"] >= 3
    assert pd.read_csv(COMMITTED / "teacher_errors.csv").augmented_train_error.mean() >= 3


@pytest.mark.slow
def test_student_seed0_reproduces_the_committed_accuracy(tmp_path):
    folder = _run_folder("student", 0)
    saved = json.loads((folder / "config.json").read_text())
    fields = {f.name for f in dataclasses.fields(recipes.RunConfig)}
    saved = {k: v for k, v in saved.items() if k in fields}
    saved["lr_milestones"] = tuple(saved["lr_milestones"])
    cfg = recipes.RunConfig(**saved).replace(run_dir=str(tmp_path / "student"), resume=False, progress=False, device="cpu")
    result = train.fit(cfg)
    committed = train.read_metrics(folder)
    # Never bit-exact: CPUs that share a model name still differ in their SIMD kernels (another
    # AMD EPYC host diverged from epoch 1: 9.35 vs 9.58 %), and over a run of SGD a rounding
    # difference acts like another seed. So the tolerance is the study's seed-to-seed spread:
    # two draws differ by sqrt(2) sd on average; 4 sd (+ half a point of test-set granularity)
    # bounds that with room to spare, and still fails a run that does not learn the task.
    sd = seeds.load_summary(COMMITTED).summary.set_index("method").loc["student", "top1_sd"]
    assert math.isfinite(sd)
    assert abs(result.final["top1"] - committed[-1]["test_top1"]) <= 4 * sd + 0.5
