"""Benchmark result files (JSON, one per device, date, pair and options) and how they are shown:
a table, a bar plot and plain-text summaries."""

from __future__ import annotations

import json
import os
import re
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .config import ABLATIONS

__all__ = ["RESULT_SCHEMA_VERSION", "REQUIRED_RESULT_KEYS", "REQUIRED_CONFIGURATION_KEYS", "default_result_path",
           "save_result", "find_results_dir", "load_results", "results_table", "plot_throughput", "ablation_effects",
           "format_summary", "format_projection"]

RESULT_SCHEMA_VERSION = 1

REQUIRED_RESULT_KEYS = ("schema_version", "created", "machine", "config", "flops", "configurations",
                        "ratio_ours_over_reference", "paired_round_ratios", "projection", "notes")
REQUIRED_CONFIGURATION_KEYS = ("images_per_s", "images_per_s_rounds", "step_time_ms", "peak_memory_mib",
                               "achieved_tflops", "precision", "data", "teacher_mode", "losses_finite")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _ours_options(config: Dict[str, object]) -> List[str]:
    """The options of a result's config that change ours from cdlib's defaults."""
    options = []
    if config.get("amp", "auto") != "auto":
        options.append(f"amp {config['amp']}")
    if config.get("channels_last") is not None:
        options.append("channels_last" if config["channels_last"] else "no channels_last")
    if config.get("compile"):
        options.append("compile")
    return options


def default_result_path(result: Dict[str, object], folder: str | os.PathLike) -> Path:
    """``<folder>/<device>-<date>-<teacher>-to-<student>-b<batch>.json``."""
    machine, config = result["machine"], result["config"]
    if machine["device_type"] == "cuda":
        device = _slug(machine["device_name"])
    else:
        device = f"{machine['device_type']}-{machine['cpu_count']}core"
    date = str(result["created"])[:10]
    # Options that change ours from cdlib's defaults get their own file.
    variant = "".join(f"-{_slug(option)}" for option in _ours_options(config))
    name = f"{device}-{date}-{config['teacher']}-to-{config['student']}-b{config['batch_size']}{variant}.json"
    return Path(folder) / name


def save_result(result: Dict[str, object], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf8")
    return path


def find_results_dir(start: str | os.PathLike | None = None) -> Optional[Path]:
    """``benchmarks/results`` in ``start`` (default: the working directory) or a
    folder above it, else in the checkout holding this package (an editable
    install); None if neither."""
    here = Path(start or Path.cwd()).resolve()
    candidates = [folder / "benchmarks" / "results" for folder in (here, *here.parents)]
    candidates.append(Path(__file__).resolve().parents[1] / "benchmarks" / "results")
    return next((c for c in candidates if c.is_dir()), None)


def load_results(folder: str | os.PathLike | None) -> List[Dict[str, object]]:
    """Every benchmark result (``*.json``) in ``folder``, oldest first; [] for None."""
    if folder is None:
        return []
    results = []
    for path in sorted(Path(folder).glob("*.json")):
        result = json.loads(path.read_text(encoding="utf8"))
        if isinstance(result, dict) and all(k in result for k in REQUIRED_RESULT_KEYS):
            result["_source"] = path.name
            results.append(result)
    return sorted(results, key=lambda r: r["created"])


def results_table(results: Sequence[Dict[str, object]]):
    """One row per (result, configuration): device, pair, images/s, ratio... as a pandas DataFrame."""
    import pandas as pd

    rows = []
    for result in results:
        machine, config = result["machine"], result["config"]
        device = machine["device_name"] if machine["device_type"] == "cuda" else f"CPU, {machine['cpu_count']} cores"
        run = f"{device}\n{config['teacher']} -> {config['student']}, batch {config['batch_size']}"
        options = _ours_options(config)
        if options:
            run += "\nours with " + ", ".join(options)
        if "_source" not in result:  # not loaded from a file: the run just made
            run += "\n(this run)"
        for name, c in result["configurations"].items():
            rows.append({
                "run": run,
                "source": result.get("_source", "this run"),
                "configuration": name,
                "device": device,
                "pair": f"{config['teacher']} -> {config['student']}",
                "batch": config["batch_size"],
                "ours_options": ", ".join(_ours_options(config)),
                "images_per_s": c["images_per_s"],
                "step_time_ms": c["step_time_ms"],
                "peak_memory_mib": c["peak_memory_mib"],
                "achieved_tflops": c["achieved_tflops"],
                "ratio_ours_over_reference": result["ratio_ours_over_reference"],
                "date": str(result["created"])[:10],
            })
    return pd.DataFrame(rows)


def plot_throughput(table, ax=None):
    """Horizontal bars of images/s per run: ours vs reference-style (and ablations),
    with ours / reference-style written next to each run."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    runs = list(dict.fromkeys(table["run"]))
    if ax is None:
        bars = len(table)
        _, ax = plt.subplots(figsize=(8.0, 1.0 + 0.32 * bars + 0.25 * len(runs)))
    sns.barplot(data=table, y="run", x="images_per_s", hue="configuration", errorbar=None, orient="h", order=runs, ax=ax)
    if table["images_per_s"].max() / max(table["images_per_s"].min(), 1e-9) > 30:
        ax.set_xscale("log")  # CPUs and GPUs differ by orders of magnitude
    ax.set_ylabel("")
    ax.set_xlabel("images / s (median of rounds)")
    ax.set_title("Distillation training throughput")
    for index, run in enumerate(runs):
        rows = table[table["run"] == run]
        ratio = rows["ratio_ours_over_reference"].iloc[0]
        ax.annotate(f" ours {ratio:.2f}x", (rows["images_per_s"].max(), index), xytext=(4, 0),
                    textcoords="offset points", ha="left", va="center", fontsize="small", fontweight="bold")
    ax.set_xlim(right=ax.get_xlim()[1] * (3 if ax.get_xscale() == "log" else 1.2))  # room for the labels
    ax.legend(title=None, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def ablation_effects(result: Dict[str, object]) -> Dict[str, float]:
    """What each ingredient is worth, from a run with ablations: medians of the
    per-round speed ratios of two configurations that differ in that ingredient
    only (windows of one round ran back to back, so each ratio saw the same load)."""
    rounds = {name: c["images_per_s_rounds"] for name, c in result["configurations"].items()}
    if not all(name in rounds for name in ABLATIONS):
        return {}
    pairs = {
        "data pipeline, with ours' step": ("ours", "ours_step_pil_data"),
        "data pipeline, with the reference-style step": ("reference_step_device_data", "reference_style"),
        "step, with DeviceLoader data": ("ours", "reference_step_device_data"),
        "step, with the PIL DataLoader": ("ours_step_pil_data", "reference_style"),
    }
    return {label: statistics.median(f / s for f, s in zip(rounds[fast], rounds[slow]))
            for label, (fast, slow) in pairs.items()}


def format_summary(result: Dict[str, object]) -> str:
    """A plain-text table of the configurations of one result."""
    lines = [f"{'configuration':<28}{'img/s':>10}{'step ms':>10}{'peak MiB':>10}{'TFLOP/s':>9}{'% peak':>8}  precision / data"]
    for name, c in result["configurations"].items():
        memory = "n/a" if c["peak_memory_mib"] is None else f"{c['peak_memory_mib']:.0f}"
        share = "n/a" if c["utilisation_of_peak"] is None else f"{100 * c['utilisation_of_peak']:.1f}"
        lines.append(f"{name:<28}{c['images_per_s']:>10.1f}{c['step_time_ms']:>10.1f}{memory:>10}"
                     f"{c['achieved_tflops']:>9.3g}{share:>8}  {c['precision']}, {c['data'].split(' (')[0]}")
    rounds = ", ".join(f"{r:.2f}" for r in result["paired_round_ratios"])
    lines.append(f"ours / reference-style: {result['ratio_ours_over_reference']:.2f}x (per round: {rounds})")
    for label, effect in ablation_effects(result).items():
        lines.append(f"  worth of the {label}: {effect:.2f}x (median of per-round ratios)")
    return "\n".join(lines)


def _duration(hours: float) -> str:
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


def format_projection(projection: Dict[str, object]) -> str:
    """The FLOP-based estimate (and the measured projection, if any) as text."""
    estimate = projection["flop_based_estimate"]
    lines = [
        f"{estimate['label']}: {estimate['teacher']} -> {estimate['student']}, {estimate['epochs']} epochs x "
        f"{estimate['images_per_epoch']:,} images",
        f"  {estimate['flops_per_image'] / 1e9:.2f} GFLOP per image per step -> {estimate['total_flops']:.3g} FLOP in total; "
        f"assumed utilisation {100 * estimate['assumed_utilisation']:.0f}% of dense peak",
    ]
    for gpu, per_config in estimate["gpus"].items():
        for name, e in per_config.items():
            lines.append(f"  {gpu:<9} {name:<16} {e['precision']:<5} peak {e['peak_tflops']:>6.1f} TFLOP/s: "
                         f">= {_duration(e['hours_at_peak'])} at peak, ~{_duration(e['hours_estimate'])} estimated "
                         f"(+ ~{_duration(e['teacher_training_hours_estimate'])} to train the teacher first)")
    measured = projection.get("measured")
    if measured:
        hours = ", ".join(f"{name} {_duration(h)}" for name, h in measured["hours"].items())
        lines.append(f"  measured ({measured['pair']}{'' if measured['matches_paper_recipe'] else ', NOT the paper pair'}): {hours}")
    return "\n".join(lines)
