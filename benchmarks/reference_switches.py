"""Which of the reference code's implementation details matter? Each reference switch, measured on the CPU study.

One command, from the repository root::

    python benchmarks/reference_switches.py --jobs 2 --teachers runs/cpu-study

trains, for each of the seeds 0-4, the full method (``cd+gkd+edt``) of the
recipe ``cpu-study`` with our defaults, then with each reference behaviour
switched on alone (``teacher_bn_train``, ``keep_zero_weight_terms``, zero
instead of reflect padding) and with all of them (``reference_compat``), and
compares them paired by seed with :mod:`cdlib.seeds`. Two switches need no runs
of their own:

* ``report_best_epoch`` changes what a run reports, not how it trains: its
  effect is the best-epoch top-1 of the default runs against their last epoch;
* ``gkd_nan_on_all_wrong`` changes a run only on a batch where the teacher is
  wrong on every sample, where it stops the run as diverged; it is part of the
  ``reference_compat`` runs, so each of them that finishes is a run in which no
  such batch occurred.

The teachers are those of the CPU study (``--teachers``, its work folder), copied
in when this folder has none, so teachers are not trained again; without them
each seed's teacher is trained here. Writes into ``results/reference-switches/``:
``summary.csv`` / ``per_seed.csv`` (cdlib.seeds formats, baseline the default
full method), ``switches.csv`` (the table of the README: one row per switch),
every run's ``config.json`` and ``metrics.jsonl`` and ``provenance.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = "cd+gkd+edt"
METHOD = "cd+gkd+edt"


def variants(recipe_data_options: dict) -> list:
    """label -> the settings that differ from the recipe, the default full method first."""
    return [
        DEFAULT,
        {"teacher_bn_train": {"method": METHOD, "teacher_bn_train": True}},
        {"keep_zero_weight_terms": {"method": METHOD, "keep_zero_weight_terms": True}},
        {"pad_mode=zeros": {"method": METHOD, "data_options": {**recipe_data_options, "pad_mode": "zeros"}}},
        {"reference_compat": {"method": METHOD, "reference_compat": True}},
    ]


def _label(spec) -> str:
    return spec if isinstance(spec, str) else next(iter(spec))


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "cdlib", "benchmarks/reference_switches.py"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+uncommitted-changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _load() -> list:
    return [round(x, 2) for x in os.getloadavg()]


def copy_teachers(source: Path, work: Path, seed_list) -> list:
    """Copy each seed's finished teacher of the CPU study (model, config, metrics) where this study has none."""
    copied = []
    for seed in seed_list:
        src, dst = source / "teacher" / f"seed{seed}", work / "teacher" / f"seed{seed}"
        if (dst / "model.pt").exists() or not (src / "model.pt").exists():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "metrics.jsonl", "model.pt", "teacher.json"):
            if (src / name).exists():
                shutil.copy2(src / name, dst / name)
        copied.append(seed)
    return copied


def _pairs(seed_list, specs) -> list:
    """(seed, spec) in seed-major order: a study stopped early still has every switch of its first seeds."""
    return [(seed, spec) for seed in seed_list for spec in specs]


def _worker(cfg, pairs, timings: Path) -> None:
    from cdlib import seeds

    for seed, spec in pairs:
        started = time.perf_counter()
        study = seeds.run(cfg, seeds=[seed], methods=[spec], baseline=_label(spec), plot=False)
        row = study.per_seed[study.per_seed["method"] == _label(spec)].iloc[0]
        seconds = time.perf_counter() - started
        if seconds >= row["train_seconds"]:  # trained here, not reused
            with open(timings, "a") as f:
                f.write(json.dumps({"method": _label(spec), "seed": seed, "wall_seconds": round(seconds, 2),
                                    "train_seconds": round(float(row["train_seconds"]), 2), "load": _load()}) + "\n")


def switch_table(per_seed, level: float = 0.95):
    """One row per switch: mean top-1, paired difference to the default full method (last epoch) with its interval.

    ``report_best_epoch`` is the default runs' best epoch against their last; ``reference_compat (best epoch)``
    the reference_compat runs' best epoch (what the reference code would report) against the default's last.
    """
    import pandas as pd

    from cdlib import stats

    frame = pd.DataFrame(per_seed)
    base = frame[frame["method"] == DEFAULT].set_index("seed")
    rows = []

    def add(label: str, runs, column: str) -> None:
        runs = runs.set_index("seed")
        shared = [s for s in runs.index if s in base.index]
        if not shared:
            return
        mine = [float(runs.loc[s, column]) for s in shared]
        mean = stats.mean_interval(mine, level)
        row = {"switch": label, "n_seeds": len(shared), "top1_mean": mean.mean, "top1_ci_low": mean.low,
               "top1_ci_high": mean.high}
        if label == DEFAULT + " (default)":
            row.update(diff_mean=math.nan, diff_ci_low=math.nan, diff_ci_high=math.nan, resolved=False)
        else:
            diff = stats.paired_difference(mine, [float(base.loc[s, "top1"]) for s in shared], level)
            row.update(diff_mean=diff.mean, diff_ci_low=diff.low, diff_ci_high=diff.high, resolved=diff.excludes_zero)
        rows.append(row)

    add(DEFAULT + " (default)", frame[frame["method"] == DEFAULT], "top1")
    for label in dict.fromkeys(frame["method"]):
        if label not in (DEFAULT, "teacher"):
            add(label, frame[frame["method"] == label], "top1")
    add("report_best_epoch", frame[frame["method"] == DEFAULT], "top1_best")
    add("reference_compat (best epoch)", frame[frame["method"] == "reference_compat"], "top1_best")
    table = pd.DataFrame(rows)
    table["verdict"] = [_verdict(r) for r in table.itertuples()]
    return table


def _verdict(row) -> str:
    if math.isnan(row.diff_mean):
        return "baseline"
    if math.isnan(row.diff_ci_low):
        return "one seed: not resolved"
    if not row.resolved:
        return "no resolved difference"
    return "resolved: " + ("higher" if row.diff_mean > 0 else "lower")


def _copy_runs(work: Path, out: Path) -> None:
    for config in sorted(work.glob("*/seed*/config.json")):
        run = config.parent
        target = out / run.relative_to(work)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "metrics.jsonl", "teacher.json"):
            if (run / name).exists():
                shutil.copy2(run / name, target / name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--work", default="runs/reference-switches", help="where the runs train (reused when finished)")
    parser.add_argument("--out", default="results/reference-switches", help="where the committed result set goes")
    parser.add_argument("--teachers", default="runs/cpu-study", help="the CPU study's work folder, whose teachers are reused")
    parser.add_argument("--jobs", type=int, default=1, help="processes training side by side (one thread each)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (smoke tests only)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    import cdlib
    from cdlib import device, recipes, seeds

    seed_list = seeds.parse_seeds(args.seeds)
    work, out = Path(args.work), Path(args.out)
    overrides = {"run_dir": str(work), "progress": False, "device": "cpu"}
    if args.epochs:
        overrides["epochs"] = args.epochs
    cfg = recipes.get("cpu-study", **overrides)
    specs = variants(cfg.data_options)
    pairs = _pairs(seed_list, specs)
    work.mkdir(parents=True, exist_ok=True)
    timings = work / "timings.jsonl"
    if args.worker is not None:
        _worker(cfg, pairs[args.worker :: args.jobs], timings)
        return 0

    started, started_at, load_before, commit = time.perf_counter(), datetime.datetime.now().astimezone(), _load(), _git_commit()
    present = [s for s in seed_list if (work / seeds.TEACHER / f"seed{s}" / "model.pt").exists()]
    copied = copy_teachers(Path(args.teachers), work, seed_list)
    if args.jobs > 1:
        # A seed without a teacher trains it (and its default run) here first, so two workers never train one teacher.
        for seed in seed_list:
            if not (work / seeds.TEACHER / f"seed{seed}" / "model.pt").exists():
                seeds.run(cfg, seeds=[seed], methods=[DEFAULT], baseline=DEFAULT, plot=False)
        command = [sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--seeds", args.seeds,
                   "--jobs", str(args.jobs)] + (["--epochs", str(args.epochs)] if args.epochs else [])
        workers = [subprocess.Popen(command + ["--worker", str(i)]) for i in range(args.jobs)]
        if any(w.wait() != 0 for w in workers):
            print("a worker failed; rerun the same command to continue (finished runs are reused).", file=sys.stderr)
            return 1
    study = seeds.run(cfg, seeds=seed_list, baseline=DEFAULT, methods=specs, plot=True)
    table = switch_table(study.per_seed)
    wall = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    _copy_runs(work, out)
    for name in (seeds.SUMMARY_FILE, seeds.PER_SEED_FILE, seeds.PLOT_FILE):
        shutil.copy2(work / name, out / name)
    table.to_csv(out / "switches.csv", index=False)
    run_times = [json.loads(line) for line in timings.read_text().splitlines()] if timings.exists() else []
    provenance = {
        "command": " ".join([Path(sys.executable).name, "benchmarks/reference_switches.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "recipe": "cpu-study",
        "variants": specs,
        "teachers_copied_from": str(args.teachers) if copied else None,
        "teacher_seeds_copied": copied,
        "teacher_seeds_present_at_start": present,  # copied by an earlier invocation, or trained by one
        "config": json.loads((work / seeds._slug(DEFAULT) / f"seed{seed_list[0]}" / "config.json").read_text()),
        "cdlib_version": cdlib.__version__,
        "git_commit": commit,  # at the start: the code the runs trained with
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cpu_model": device.cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads_per_process": torch.get_num_threads(),
        "jobs": args.jobs,
        "date": started_at.isoformat(timespec="seconds"),
        "wall_seconds_last_invocation": round(wall, 1),
        "run_wall_seconds_total": round(sum(r["wall_seconds"] for r in run_times), 1),
        "load_average_before": load_before,
        "load_average_after": _load(),
        "runs": run_times,
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(table.to_string(index=False))
    print(f"reference switches: {wall / 60:.1f} min wall time; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
