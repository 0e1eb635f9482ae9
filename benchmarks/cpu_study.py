"""The CPU study: one contrast per question of the book, ten seeds, the reference recipe in miniature.

One command, from the repository root::

    python benchmarks/cpu_study.py --jobs 2     # ~1 h on an idle 2-core CPU; writes results/cpu-study/

trains, for each of the seeds 0-9, the teacher and the students of the recipe
``cpu-study`` (cluttered digits, the CIFAR-100 recipe in proportion; see
``cdlib.recipes`` and results/cpu-study/README.md) listed in ``METHODS``, then
evaluates the family of contrasts declared in ``_family()`` below — declared here,
before any run, and guarded with Holm's adjustment across the family — and
writes into ``results/cpu-study/``:

* ``contrasts.csv`` — per contrast: question, a, b, pairs, mean paired
  difference, its 95 % t-interval, paired t-test p, Holm-adjusted p, verdict
  (``resolved: better/worse`` when p_holm < 0.05, else ``not resolved``) and the
  minimum detectable effect (80 % power, alpha 0.05);
* ``summary.csv`` / ``per_seed.csv`` — every arm's accuracy per seed and summarised
  (cdlib.seeds formats; the teacher has rows too, method ``teacher``), and
  ``seed_comparison.png``;
* ``teacher_errors.csv`` — per seed, the teacher's error on the test set, on the
  training images and on augmented training images (what GKD drops);
* ``<method>/seed<k>/config.json`` and ``metrics.jsonl`` of every run (no model
  files: the commit stays small);
* ``provenance.json`` — every invocation, versions, git commit, CPU model,
  threads, load, date, wall time of the study and of each run.

Runs go to ``--work`` (default ``runs/cpu-study``, not committed) and are
reused when finished, so an interrupted study continues where it stopped.
``--jobs 2`` trains seeds side by side in separate processes (one torch thread
each). ``tests/test_cpu_study.py`` checks the committed folder against itself and
against this family, and re-trains one run to check it lands within the study's
spread.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The study's arms: label -> settings that differ from the recipe (a plain string is a method).
# KD and GKD run at the same temperature and weight (the recipe's), so that they differ only in
# GKD's mask; `cd+gkd` keeps lambda_CD constant with cross-entropy from epoch 1 (no EDT).
METHODS = [
    "student",
    "kd",
    "gkd",
    "cd",
    "cd+kd",
    "cd+gkd",
    "cd+gkd+edt",  # the paper's staircase: CD-only warm-up, then lambda_CD x0.9 twice
    {"cd+gkd+edt (warm-up only)": {"method": "cd+gkd+edt", "schedule": "paper-cifar100-warmup-only"}},
    {"cd+gkd+edt (decay only)": {"method": "cd+gkd+edt", "schedule": "paper-cifar100-decay-only"}},
]


def _family():
    """The contrasts the study answers, declared before it runs; Holm guards them as one family."""
    from cdlib.seeds import Contrast

    return [
        Contrast("01 does CD help?", "cd", "student"),
        Contrast("02 GKD vs KD (same temperature and weight)", "gkd", "kd"),
        Contrast("02 GKD vs KD beside CD", "cd+gkd", "cd+kd"),
        Contrast("03 does EDT (the staircase) help?", "cd+gkd+edt", "cd+gkd"),
        Contrast("03 EDT's CD-only warm-up alone", "cd+gkd+edt (warm-up only)", "cd+gkd"),
        Contrast("03 EDT's lambda_CD decay alone", "cd+gkd+edt (decay only)", "cd+gkd"),
        Contrast("paper's headline: the full method vs KD", "cd+gkd+edt", "kd"),
    ]


def _git_commit() -> str:
    if os.environ.get("CDLIB_GIT_COMMIT"):  # a study run from an exported tree (git archive) has no .git
        return os.environ["CDLIB_GIT_COMMIT"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "cdlib", "benchmarks/cpu_study.py"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+uncommitted-changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _load() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def _study(cfg, seed_list, timings_path: Path, plot: bool):
    """cdlib.seeds.run over ``seed_list``, logging each run's wall time (reused runs are not logged)."""
    from cdlib import seeds

    clock = {"last": time.perf_counter()}

    def on_run(label, seed, row):
        now = time.perf_counter()
        seconds = now - clock["last"]
        clock["last"] = now
        if seconds >= row["train_seconds"]:  # a trained run takes longer than its training; a reused one does not
            with open(timings_path, "a") as f:
                f.write(json.dumps({"method": label, "seed": seed, "wall_seconds": round(seconds, 2),
                                    "train_seconds": round(row["train_seconds"], 2), "load": _load()}) + "\n")

    return seeds.run(cfg, seeds=seed_list, baseline="student", methods=METHODS, plot=plot, on_run=on_run)


def teacher_errors(cfg, seed_list, work: Path, augmented_epochs: int = 5):
    """Per seed: the teacher's top-1 error (%) on the test set, the training images, and augmented training images."""
    import torch

    from cdlib import checkpoint, data, parts

    bundle = parts.load_data(cfg)
    rows = []
    for seed in seed_list:
        model = checkpoint.load_model(str(work / "teacher" / f"seed{seed}" / "model.pt"), num_classes=bundle.num_classes)
        model.eval()

        def error(loader, epochs=1, model=model):
            wrong = total = 0
            with torch.no_grad():
                for epoch in range(epochs):
                    if hasattr(loader, "set_epoch"):
                        loader.set_epoch(epoch)
                    for images, labels in loader:
                        wrong += int((model(images).argmax(1) != labels).sum())
                        total += len(labels)
            return 100.0 * wrong / total

        augmented = data.make_loader(bundle.train, 256, train=True, seed=1000 + seed)
        augmented.drop_last = False
        rows.append({"seed": seed,
                     "test_error": round(error(data.make_loader(bundle.test, 512, train=False)), 3),
                     "train_error": round(error(data.make_loader(bundle.train, 512, train=False)), 3),
                     "augmented_train_error": round(error(augmented, augmented_epochs), 3)})
    return rows


def _copy_runs(work: Path, out: Path) -> None:
    for config in sorted(work.glob("*/seed*/config.json")):
        run = config.parent
        target = out / run.relative_to(work)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "metrics.jsonl"):
            shutil.copy2(run / name, target / name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--work", default="runs/cpu-study", help="where the runs train (reused when finished)")
    parser.add_argument("--out", default="results/cpu-study", help="where the committed result set goes")
    parser.add_argument("--jobs", type=int, default=1, help="processes training seeds side by side (one thread each)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (smoke tests only)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)  # one thread per process: reproducible, and fair on a shared machine
    import cdlib
    from cdlib import device, recipes, seeds

    seed_list = seeds.parse_seeds(args.seeds)
    work, out = Path(args.work), Path(args.out)
    overrides = {"run_dir": str(work), "progress": False, "device": "cpu"}
    if args.epochs:
        overrides["epochs"] = args.epochs
    cfg = recipes.get("cpu-study", **overrides)
    work.mkdir(parents=True, exist_ok=True)
    timings = work / "timings.jsonl"
    if args.worker:
        _study(cfg, seed_list, timings, plot=False)
        return 0

    started, started_at, load_before = time.perf_counter(), datetime.datetime.now().astimezone(), _load()
    # An interrupted study is continued by running the command again: its wall time counts from the first start.
    first = work / "first_start.json"
    if not first.exists():
        first.write_text(json.dumps({"date": started_at.isoformat(timespec="seconds"), "load": load_before}))
    first_start = json.loads(first.read_text())
    command = " ".join([Path(sys.executable).name, "benchmarks/cpu_study.py", *(argv if argv is not None else sys.argv[1:])])
    with open(work / "invocations.jsonl", "a") as f:
        f.write(json.dumps({"command": command, "date": started_at.isoformat(timespec="seconds"), "load": load_before}) + "\n")
    if args.jobs > 1:
        # Seeds split over processes; each writes its own run folders, then the study below reuses them all.
        groups = [seed_list[i :: args.jobs] for i in range(args.jobs)]
        worker = [sys.executable, str(Path(__file__).resolve()), "--worker", "--work", str(work)]
        if args.epochs:
            worker += ["--epochs", str(args.epochs)]
        workers = [subprocess.Popen(worker + ["--seeds", ",".join(map(str, g))]) for g in groups if g]
        if any(w.wait() != 0 for w in workers):
            print("a worker failed; rerun the same command to continue (finished runs are reused).", file=sys.stderr)
            return 1
    _study(cfg, seed_list, timings, plot=True)
    errors = teacher_errors(cfg, seed_list, work)
    wall = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    _copy_runs(work, out)
    for name in (seeds.SUMMARY_FILE, seeds.PER_SEED_FILE, seeds.PLOT_FILE):
        shutil.copy2(work / name, out / name)
    import pandas as pd

    pd.DataFrame(errors).to_csv(out / "teacher_errors.csv", index=False)
    table = seeds.contrasts(pd.read_csv(out / seeds.PER_SEED_FILE), _family())
    table.to_csv(out / seeds.CONTRASTS_FILE, index=False)
    run_times = [json.loads(line) for line in timings.read_text().splitlines()] if timings.exists() else []
    run_times = [r for r in run_times if r["wall_seconds"] >= r["train_seconds"]]  # reused runs are not timed
    provenance = {
        "command": command,
        # Every invocation into this work folder: a study continued after an interruption is one study.
        "invocations": [json.loads(line) for line in (work / "invocations.jsonl").read_text().splitlines()],
        "recipe": "cpu-study",
        "config": json.loads((work / "student" / f"seed{seed_list[0]}" / "config.json").read_text()),
        "cdlib_version": cdlib.__version__,
        "git_commit": _git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cpu_model": device.cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads_per_process": torch.get_num_threads(),
        "jobs": args.jobs,
        "date": first_start["date"],
        # From the first start to the end of this invocation (the last one may only have reused finished runs).
        "wall_seconds": round((datetime.datetime.now().astimezone()
                               - datetime.datetime.fromisoformat(first_start["date"])).total_seconds(), 1),
        "wall_seconds_last_invocation": round(wall, 1),
        "run_wall_seconds_total": round(sum(r["wall_seconds"] for r in run_times), 1),
        "load_average_before": first_start["load"],
        "load_average_after": _load(),
        "runs": run_times,
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"study: {wall / 60:.1f} min wall time; results in {out}")
    print(pd.DataFrame(errors).to_string(index=False))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.drop(columns=["question"]).round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
