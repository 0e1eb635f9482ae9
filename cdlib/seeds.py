"""Runs over several seeds, and the comparison that says which differences are real.

``run(cfg, seeds=[0, 1, 2, 3, 4])`` trains every method of ``cfg.method`` once
per seed and compares them: per method the mean, sd and 95 % t-interval of the
final top-1, and the paired (same seed) difference to a baseline method with its
interval. A difference counts as resolved only when its interval excludes 0.

Layout of the experiment folder ``cfg.run_dir``::

    teacher/seed<k>/     one teacher per seed (config.json, metrics.jsonl, model.pt)
    <method>/seed<k>/    each method, each seed ('cd+gkd+edt' -> cd_gkd_edt)
    per_seed.csv         one row per run: method, seed, top1, top1_best, top5, train_seconds
    summary.csv          one row per method: top-1 mean, sd and interval, its difference to the baseline

A seed is a replicate of the whole pipeline, so each seed trains its own teacher
(the luck of a teacher's initialisation is part of what a user of the method
gets, and paired differences then compare students of the same teacher). With
``teacher_checkpoint`` or pretrained weights in ``cfg``, that one teacher serves
every seed. A finished run (``model.pt`` present, same settings) is reused, an
interrupted one resumed, so rerunning the same call only trains what is missing.
The tables of an experiment folder accumulate: a later study into it keeps the
rows of other methods and seeds and refreshes its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from . import distributed, runfolder, stats, terms
from .checkpoint import atomic_write
from .errors import CheckpointError, ConfigError
from .interrupt import DeferredInterrupt
from .recipes import RunConfig, parse_method, validate

__all__ = ["parse_seeds", "MAX_SEEDS", "run", "summarize", "format_table", "verdicts", "load_summary", "SeedStudy",
           "PER_SEED_COLUMNS", "SUMMARY_COLUMNS", "TEACHER", "Contrast", "contrasts", "CONTRAST_COLUMNS"]

TEACHER = "teacher"
PER_SEED_FILE, SUMMARY_FILE, PLOT_FILE = "per_seed.csv", "summary.csv", "seed_comparison.png"
CONTRASTS_FILE = "contrasts.csv"
PER_SEED_COLUMNS = ["method", "seed", "top1", "top1_best", "top5", "train_seconds"]
SUMMARY_COLUMNS = ["method", "n_seeds", "top1_mean", "top1_sd", "top1_ci_low", "top1_ci_high",
                   "diff_mean", "diff_ci_low", "diff_ci_high", "resolved", "top1_best_mean", "train_seconds_mean"]
# Settings that do not change what a run computes: a finished run is reused whatever they say.
_MACHINERY = {"device", "amp", "channels_last", "compile", "num_workers", "data_on_device", "run_dir", "resume",
              "overwrite", "progress", "download", "data_root", "teacher_checkpoint"}

MethodSpec = Union[str, Mapping[str, Mapping[str, object]]]


def parse_seeds(text: Union[str, int, Sequence[int]]) -> List[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,2,5' -> [0, 2, 5]; '0-2,7' -> [0, 1, 2, 7]; a list passes through (checked).

    At most :data:`MAX_SEEDS` seeds: each is a training run per method, so more is a typo, refused before any
    range is expanded.
    """
    if isinstance(text, int):
        text = [text]
    if isinstance(text, str):
        ranges = []
        for part in text.replace(" ", "").split(","):
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not match or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
                raise ConfigError(
                    f"cannot read seeds {text!r}: write a range '0-4', a list '0,2,5' or both '0-2,7' "
                    "(whole numbers 0 or more, ranges low-high)."
                )
            ranges.append(range(int(match.group(1)), int(match.group(2) or match.group(1)) + 1))
        _check_count(sum(len(r) for r in ranges), f"seeds {text!r}")
        seeds = [s for r in ranges for s in r]
    elif isinstance(text, Iterable):
        seeds = list(text)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise ConfigError(f"seeds must be whole numbers 0 or more, got {seeds[:10]!r}.")
        _check_count(len(seeds), f"seeds {seeds[:3]!r}"[:-1] + ", ...]")
    else:
        raise ConfigError(f"seeds must be a range '0-4', a list '0,2,5' or whole numbers such as [0, 1, 2], "
                          f"got {text!r}.")
    duplicates = sorted(s for s, count in Counter(seeds).items() if count > 1)
    if duplicates:
        raise ConfigError(f"seeds {text!r} name seed(s) {duplicates[:10]} more than once; each seed is one run.")
    too_large = [s for s in seeds if s >= SEED_LIMIT]
    if too_large:
        raise ConfigError(f"seed {too_large[0]} is not a whole number from 0 to {SEED_LIMIT - 1}; "
                          "pick seeds in that range.")
    return seeds


MAX_SEEDS = 10_000
SEED_LIMIT = 2**32  # cdlib.resume.check_seed's bound, checked here so that no run starts before a later seed fails


def _check_count(count: int, what: str) -> None:
    if count > MAX_SEEDS:
        raise ConfigError(f"{what} name {count:,} seeds, each a training run per method; at most {MAX_SEEDS:,} are "
                          "taken (a typo?): name fewer, e.g. 0-4.")


@dataclass
class SeedStudy:
    """What :func:`run` and :func:`load_summary` return: both tables (pandas DataFrames) and where they live."""

    summary: "object"
    per_seed: "object"
    baseline: str
    folder: Optional[Path] = None
    # The declared family of paired contrasts (contrasts.csv, see :func:`contrasts`), where the study has one.
    contrasts: Optional["object"] = None


# ------------------------------------------------------------------ statistics


def summarize(per_seed, baseline: str = "student", level: float = 0.95):
    """The summary table of a per-seed table (columns at least method, seed, top1, top1_best).

    ``diff_*`` is the paired difference ``method - baseline`` over the seeds
    both have; ``resolved`` is True when its interval excludes 0.
    """
    import pandas as pd

    frame = pd.DataFrame(per_seed)
    top1 = {m: g.set_index("seed")["top1"] for m, g in frame.groupby("method", sort=False)}
    if baseline not in top1:
        raise ConfigError(f"baseline {baseline!r} is not among the methods compared ({', '.join(top1)}).")
    rows = []
    for method, runs in frame.groupby("method", sort=False):
        runs = runs.sort_values("seed")
        spread = stats.mean_interval(runs["top1"].tolist(), level)
        diff = (method != baseline and _paired(top1, method, baseline, level)) or _NO_PAIRS
        rows.append({"method": method, "n_seeds": spread.n, "top1_mean": spread.mean, "top1_sd": spread.sd,
                     "top1_ci_low": spread.low, "top1_ci_high": spread.high, "diff_mean": diff.mean,
                     "diff_ci_low": diff.low, "diff_ci_high": diff.high, "resolved": diff.excludes_zero,
                     "top1_best_mean": float(runs["top1_best"].mean()),
                     "train_seconds_mean": float(runs["train_seconds"].mean()) if "train_seconds" in runs else math.nan})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


_NO_PAIRS = stats.Interval(0, math.nan, math.nan, math.nan, math.nan)  # the baseline itself, or no seed in common


def _paired(top1: dict, a: str, b: str, level: float) -> Optional[stats.Interval]:
    """``a - b`` paired by seed over the seeds both ran (``top1``: method -> top-1 by seed); None if none."""
    shared = sorted(set(top1[a].index) & set(top1[b].index))
    return stats.paired_difference([top1[a][s] for s in shared], [top1[b][s] for s in shared], level) if shared else None


@dataclass(frozen=True)
class Contrast:
    """One declared comparison: ``a - b``, paired by seed, asked by ``question``."""

    question: str
    a: str
    b: str

    @property
    def name(self) -> str:
        return f"{self.a} - {self.b}"


CONTRAST_COLUMNS = ["question", "contrast", "a", "b", "n_pairs", "diff_mean", "diff_sd", "ci_low", "ci_high", "p",
                    "p_holm", "verdict", "mde"]


def contrasts(per_seed, family: Sequence[Contrast], level: float = 0.95, alpha: float = 0.05, power: float = 0.8):
    """The family's paired differences with their t-intervals, paired t-test p, Holm-adjusted p and verdict.

    ``family`` is declared before the runs; Holm's adjustment across it keeps the chance of any
    false "resolved" at most ``alpha``. ``verdict``: ``resolved: better`` / ``resolved: worse``
    when ``p_holm < alpha``, else ``not resolved``. ``mde``: the difference this many pairs with
    this spread would detect with probability ``power`` at level ``alpha`` (unadjusted), a bound
    for what "not resolved" can rule out.
    """
    import pandas as pd

    top1 = {m: g.set_index("seed")["top1"] for m, g in pd.DataFrame(per_seed).groupby("method")}
    rows = []
    for c in family:
        missing = [m for m in (c.a, c.b) if m not in top1]
        if missing:
            raise ConfigError(f"contrast {c.name!r} names method(s) {missing} that the study has no runs of; "
                              f"it has {', '.join(sorted(top1))}.")
        diff = _paired(top1, c.a, c.b, level)
        if diff is None:
            raise ConfigError(f"contrast {c.name!r} has no seed that both methods ran; run them on the same seeds.")
        rows.append({"question": c.question, "contrast": c.name, "a": c.a, "b": c.b, "n_pairs": diff.n,
                     "diff_mean": diff.mean, "diff_sd": diff.sd, "ci_low": diff.low, "ci_high": diff.high,
                     "p": stats.t_test_p(diff), "mde": stats.minimum_detectable_effect(diff.sd, diff.n, alpha, power)})
    adjusted = stats.holm([r["p"] for r in rows])
    for row, p_holm in zip(rows, adjusted):
        row["p_holm"] = p_holm
        better = "resolved: better" if row["diff_mean"] > 0 else "resolved: worse"
        row["verdict"] = better if p_holm < alpha else "not resolved"
    return pd.DataFrame(rows, columns=CONTRAST_COLUMNS)


def _interval(low: float, high: float) -> str:
    return "" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"


def format_table(summary, baseline: str = "student") -> str:
    """The summary as plain text, with the footnote on best-epoch accuracy."""
    header = (f"{'method':<22}{'n':>3}{'top-1 mean':>12}{'sd':>7}{'95% CI':>18}"
              f"{'diff vs ' + baseline:>22}{'95% CI':>18}{'best-epoch*':>13}")
    lines = [header, "-" * len(header)]
    for r in summary.itertuples():
        diff = "" if math.isnan(r.diff_mean) else f"{r.diff_mean:+.2f}"
        lines.append(f"{r.method:<22}{r.n_seeds:>3}{r.top1_mean:>12.2f}{r.top1_sd:>7.2f}"
                     f"{_interval(r.top1_ci_low, r.top1_ci_high):>18}{diff:>22}"
                     f"{_interval(r.diff_ci_low, r.diff_ci_high):>18}{r.top1_best_mean:>13.2f}")
    lines.append("top-1: last epoch, % of the test set; diff: paired by seed. *best-epoch: the best test accuracy "
                 "of any epoch, as the reference code reports it; chosen on the test set, so optimistic.")
    return "\n".join(lines + verdicts(summary, baseline))


def verdicts(summary, baseline: str = "student") -> List[str]:
    """One line per method: its difference to the baseline, resolved only when the interval excludes 0."""
    out = []
    for r in summary.itertuples():
        if r.method == baseline or math.isnan(r.diff_mean):
            continue
        said = f"{r.method} vs {baseline}: {r.diff_mean:+.2f} points"
        if math.isnan(r.diff_ci_low):
            out.append(f"{said} from one seed: no interval, not resolved.")
        else:
            judged = (f"excludes 0: resolved, {'better' if r.diff_mean > 0 else 'worse'}" if r.resolved
                      else "contains 0: not resolved (within noise)")
            out.append(f"{said}, 95% CI {_interval(r.diff_ci_low, r.diff_ci_high)} {judged}.")
    return out


def load_summary(path: Union[str, os.PathLike]) -> SeedStudy:
    """The tables of an experiment folder written by :func:`run` (or its summary.csv / per_seed.csv)."""
    import pandas as pd

    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    missing = [str(folder / name) for name in (SUMMARY_FILE, PER_SEED_FILE) if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"no seed comparison in {folder}: {', '.join(missing)} missing; run cdlib.seeds.run "
                          "(CLI: cdlib distill --seeds 0-4) into that folder first.")
    summary, per_seed = pd.read_csv(folder / SUMMARY_FILE), pd.read_csv(folder / PER_SEED_FILE)
    lacking = [c for c in SUMMARY_COLUMNS[:9] if c not in summary] + [c for c in PER_SEED_COLUMNS[:4] if c not in per_seed]
    if lacking:
        raise ConfigError(f"{folder} has tables without column(s) {', '.join(lacking)}; they were not written by "
                          "cdlib.seeds.")
    no_diff = summary[summary["diff_mean"].isna()]["method"].tolist()
    baseline = next((m for m in no_diff if m != TEACHER), no_diff[0] if no_diff else "student")
    family = pd.read_csv(folder / CONTRASTS_FILE) if (folder / CONTRASTS_FILE).is_file() else None
    return SeedStudy(summary=summary, per_seed=per_seed, baseline=baseline, folder=folder, contrasts=family)


# ---------------------------------------------------------------------- runs


def _variants(cfg: RunConfig, methods: Optional[Sequence[MethodSpec]]) -> Dict[str, dict]:
    """label -> config changes. A string is a method; a mapping names a label and its overrides,
    e.g. {"cd+gkd+edt (cosine)": {"method": "cd+gkd+edt", "schedule": "cosine"}}."""
    specs = methods if methods is not None else [m.strip() for m in cfg.method.split(",") if m.strip()]
    variants: Dict[str, dict] = {}
    for spec in specs:
        items = spec.items() if isinstance(spec, Mapping) else [(spec, {"method": spec})]
        for label, changes in items:
            changes = dict(changes)
            changes.setdefault("method", label)
            if "," in str(changes["method"]):
                raise ConfigError(f"method {changes['method']!r} of {label!r} is a list; give each method its own entry.")
            parse_method(str(changes["method"]))
            if label == TEACHER:
                raise ConfigError(f"{TEACHER!r} is the name of the teacher's rows; label that method otherwise.")
            variants[label] = changes
    if not variants:
        raise ConfigError("no methods to compare; e.g. methods=['student', 'kd'] or cfg.method='student,kd'.")
    slugs = [runfolder.slug(label) for label in variants]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"methods {list(variants)} share a folder name; give them distinct labels.")
    return variants


def _settings(config: Mapping[str, object]) -> dict:
    return {k: v for k, v in config.items() if k not in _MACHINERY}


def _finished(cfg: RunConfig) -> bool:
    """True when ``cfg.run_dir`` holds a finished run of these settings; a ConfigError when it holds other ones."""
    folder = Path(cfg.run_dir)
    if not (folder / runfolder.MODEL_FILE).is_file():
        return False
    try:
        saved = json.loads((folder / runfolder.CONFIG_FILE).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{folder} holds a model.pt without a readable config.json, so it cannot be checked for "
                          "reuse; move the folder away or choose another run_dir.") from None
    before, now = _settings(saved), _settings(runfolder.config_dict(cfg))
    # A setting newer than the saved run was, in effect, at its default (e.g. the reference switches).
    before = {**{k: v for k, v in _settings(runfolder.config_dict(RunConfig())).items() if k not in before}, **before}
    diffs = [f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in now if before.get(k) != now[k]]
    if diffs:
        raise ConfigError(f"{folder} holds a finished run with other settings ({'; '.join(diffs)}); "
                          "use the original settings or another run_dir.")
    try:
        return bool(runfolder.read_metrics(folder))
    except CheckpointError:
        if (folder / runfolder.CHECKPOINT_FILE).is_file():
            return False  # resumed at its end, the run rewrites metrics.jsonl from its checkpoint, as --resume does
        raise ConfigError(f"{folder / runfolder.METRICS_FILE} is damaged and {folder} has no checkpoint.pt to rewrite "
                          "it from; restore the file, or move the folder away to train that run again.") from None


def _train_or_reuse(cfg: RunConfig, teacher: bool = False) -> dict:
    """Train ``cfg`` (resuming an interrupted attempt) unless it is finished; its per-seed row.
    A ``teacher`` records its accuracy, data and file when trained, and is checked against them when reused."""
    from . import train

    if not _finished(cfg):
        train.fit(cfg.replace(resume=True))
        if teacher and distributed.is_main_process():
            runfolder.record_teacher(cfg.run_dir, cfg)
    elif teacher and distributed.is_main_process():
        runfolder.verify_teacher(cfg.run_dir, cfg)
    metrics = runfolder.read_metrics(cfg.run_dir)
    return {"top1": metrics[-1]["test_top1"], "top1_best": max(m["test_top1"] for m in metrics),
            "top5": metrics[-1]["test_top5"], "train_seconds": sum(m["epoch_seconds"] for m in metrics)}


def run(cfg: RunConfig, seeds: Union[str, Sequence[int]] = (0, 1, 2, 3, 4), baseline: str = "student",
        methods: Optional[Sequence[MethodSpec]] = None, plot: bool = True, on_run=None) -> SeedStudy:
    """Train the teacher(s) and every method once per seed into ``cfg.run_dir``; compare; write the tables.

    ``methods`` defaults to ``cfg.method`` split at ','; entries may also be
    ``{label: overrides}`` (see :func:`_variants`). ``baseline`` is a method
    label (or ``"teacher"``). ``on_run(label, seed, row)`` is called after each
    run (the study script times runs with it). Returns a :class:`SeedStudy`;
    the table is printed, and written as per_seed.csv / summary.csv (and the
    plot as seed_comparison.png with ``plot``).
    """
    import pandas as pd

    from . import train

    seeds = parse_seeds(seeds)
    validate(cfg)
    train.check_teacher_checkpoint(cfg)
    variants = _variants(cfg, methods)
    # A teacher per seed where a method learns from one and cfg names none.
    own_teacher = not (cfg.teacher_checkpoint or cfg.teacher_pretrained) and any(
        terms.needs_teacher(parse_method(str(v["method"]))) for v in variants.values())
    labels = ([TEACHER] if own_teacher else []) + list(variants)
    if isinstance(baseline, str) and baseline not in labels and baseline.strip().lower() in labels:
        baseline = baseline.strip().lower()  # methods have one spelling (RunConfig.replace): --baseline KD means kd
    if baseline not in labels:
        raise ConfigError(f"baseline {baseline!r} is not among the methods compared ({', '.join(labels)}); "
                          "add it to the methods or pick one of them.")
    folder = Path(cfg.run_dir)
    rows = []
    # One set of signal handlers for all the runs: a Ctrl-C between two of them stops the study there.
    with DeferredInterrupt():
        for seed in seeds:
            rows.extend(_runs_of_seed(cfg, seed, variants, own_teacher, folder, on_run))
    # Read, merged and written by one study at a time: two finishing together would each drop the other's rows.
    # (Written atomically, the tables need no held signals: a Ctrl-C here leaves the previous ones whole.)
    with _tables_locked(folder):
        per_seed = _merged(folder, pd.DataFrame(rows, columns=PER_SEED_COLUMNS))
        study = SeedStudy(summary=summarize(per_seed, baseline), per_seed=per_seed, baseline=baseline, folder=folder)
        if distributed.is_main_process():
            atomic_write(folder / PER_SEED_FILE, lambda f: per_seed.to_csv(f, index=False))
            atomic_write(folder / SUMMARY_FILE, lambda f: study.summary.to_csv(f, index=False))
            print(format_table(study.summary, baseline), flush=True)
            if plot:
                _save_plot(study, folder / PLOT_FILE)
    return study


@contextlib.contextmanager
def _tables_locked(folder: Path, wait: float = 120.0) -> Iterator[None]:
    """The experiment folder's lock (:mod:`cdlib.runlock`) while its tables are merged; another study writing its
    own tables holds it for a moment, so this one waits for it rather than failing."""
    from . import runlock

    deadline = time.monotonic() + wait
    with contextlib.ExitStack() as stack:
        while True:
            try:
                stack.enter_context(runlock.held(folder, take=distributed.is_main_process()))
                break
            except ConfigError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield


def _runs_of_seed(cfg: RunConfig, seed: int, variants: Dict[str, dict], own_teacher: bool, folder: Path,
                  on_run) -> List[dict]:
    """Train (or reuse) seed ``seed``'s teacher, when the study trains its own, and every variant; their rows."""
    rows = []
    seeded = cfg.replace(seed=seed)
    if own_teacher:
        teacher_dir = folder / TEACHER / f"seed{seed}"
        teacher_cfg = seeded.replace(student=cfg.teacher, method="student", run_dir=str(teacher_dir))
        rows.append({"method": TEACHER, "seed": seed, **_train_or_reuse(teacher_cfg, teacher=True)})
        if on_run:
            on_run(TEACHER, seed, rows[-1])
        seeded = seeded.replace(teacher_checkpoint=str(Path(teacher_cfg.run_dir) / runfolder.MODEL_FILE))
    for label, changes in variants.items():
        run_cfg = seeded.replace(**changes, run_dir=str(folder / runfolder.slug(label) / f"seed{seed}"))
        rows.append({"method": label, "seed": seed, **_train_or_reuse(run_cfg)})
        if on_run:
            on_run(label, seed, rows[-1])
    return rows


def _merged(folder: Path, per_seed):
    """``per_seed`` merged into the folder's per_seed.csv: an earlier study's rows of other methods or seeds stay,
    rows of the same method and seed are replaced by this study's."""
    import pandas as pd

    path = folder / PER_SEED_FILE
    if not path.is_file():
        return per_seed
    try:
        before = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} (an earlier study's table, merged with this one's) cannot be read "
                          f"({str(exc).splitlines()[0][:120]}); move it away and rerun.") from None
    if not set(PER_SEED_COLUMNS[:4]) <= set(before.columns):
        raise ConfigError(f"{path} (an earlier study's table, merged with this one's) lacks the columns "
                          f"{', '.join(PER_SEED_COLUMNS[:4])}; move it away and rerun.")
    now = set(zip(per_seed["method"], per_seed["seed"]))
    kept = before[[(m, s) not in now for m, s in zip(before["method"], before["seed"])]]
    if kept.empty:
        return per_seed
    return pd.concat([kept.reindex(columns=PER_SEED_COLUMNS), per_seed], ignore_index=True)


def _save_plot(study: SeedStudy, path: Path) -> None:
    import matplotlib.pyplot as plt

    from . import viz

    ax = viz.seed_comparison(study.per_seed, study.summary, baseline=study.baseline)
    atomic_write(path, lambda f: ax.figure.savefig(f, dpi=110, bbox_inches="tight",
                                                   format=path.suffix.lstrip(".") or "png"))
    plt.close(ax.figure)
