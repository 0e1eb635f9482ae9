"""Plumbing for the book's chapters: loading trained runs, their data, and tables.

Everything here reads runs that :func:`cdlib.train.run` / :func:`cdlib.train.fit`
wrote (``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, ``model.pt``) or
formats what they logged; nothing trains a student and nothing computes what a
chapter teaches: channel attention over a data set, the connector probe and the
teacher's mistakes are written out in the chapters themselves. The plots are in
:mod:`cdlib.viz`.

>>> cfg = scaled_recipe("demo", epochs=15, run_dir="runs/demo")
>>> teacher, d = load_teacher(cfg), data_for(cfg)          # a frozen teacher, ordered loaders
>>> results_table({"CD": "runs/demo/cd"}, teacher="runs/demo/teacher")
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import checkpoint as ckpt
from . import data as data_mod
from . import models, recipes, runfolder
from .connectors import Connector, build_connectors
from .errors import CheckpointError, ConfigError

__all__ = ["PAPER_RESULTS", "METHOD_LABELS", "method_label", "scaled_recipe", "config_table", "variant",
           "teacher_checkpoint_of", "load_teacher", "load_student", "load_connectors", "data_for", "metrics_frame",
           "results_table", "cost_table", "paper_comparison", "connector_table", "cli_command", "binomial_se",
           "paired_bootstrap_ratio", "contrast_table", "contrast_words"]

RunLike = Union["RunResult", str, os.PathLike, Sequence[dict]]  # noqa: F821 - RunResult from cdlib.train

# Top-1 / top-5 *error* (%) as printed in Zhou et al. (2020), tables for CIFAR-100
# (ResNet152 -> ResNet50) and ImageNet (ResNet34 -> ResNet18). Keys are cdlib method names.
PAPER_RESULTS: Dict[str, Dict[str, Tuple[float, Optional[float]]]] = {
    "cifar100": {
        "teacher": (19.09, 4.45),
        "student": (22.02, 5.74),
        "kd": (20.36, 4.94),
        "cd": (20.08, 4.78),
        "cd+gkd": (19.49, 4.85),
        "cd+gkd+edt": (18.63, 4.29),
    },
    "imagenet": {
        "teacher": (26.73, 8.74),
        "student": (30.43, 10.76),
        "kd": (29.50, 9.52),
        "fitnets": (29.34, 10.77),
        "at": (29.30, 10.00),
        "cd": (28.53, 9.56),
        "cd+gkd": (28.26, 9.41),
        "cd+gkd+edt": (27.61, 9.20),
    },
}

# Labels that are not a method's terms in capitals, joined with ' + ' (as 'cd+gkd' -> 'CD + GKD').
METHOD_LABELS = {"teacher": "teacher", "student": "student alone", "fitnets": "FitNets"}


def method_label(method: str) -> str:
    """A method string as the paper's tables write it: 'cd+gkd+edt' -> 'CD + GKD + EDT'."""
    key = method.strip().lower()
    if key in METHOD_LABELS:
        return METHOD_LABELS[key]
    terms = [t for t in recipes.parse_method(key) if t != "ce"]
    return " + ".join(METHOD_LABELS.get(t, t.upper()) for t in terms) or "student alone"


# ------------------------------------------------------------------ configs


def scaled_recipe(name: str, epochs: Optional[int] = None, batch_size: Optional[int] = None,
                  **overrides) -> recipes.RunConfig:
    """``recipes.get(name, epochs=epochs, **overrides)`` (which moves the LR milestones with the epochs),
    where ``epochs=None`` or ``batch_size=None``, as a notebook parameter may be, keeps the recipe's."""
    given = {"epochs": epochs, "batch_size": batch_size}
    return recipes.get(name, **{k: v for k, v in given.items() if v is not None}, **overrides)


def config_table(cfg: recipes.RunConfig):
    """The settings of a configuration that define the experiment, as a one-column DataFrame."""
    import pandas as pd

    rows = {
        "data set": cfg.data,
        "teacher -> student": f"{cfg.teacher} -> {cfg.student}",
        "epochs, batch size": f"{cfg.epochs}, {cfg.batch_size}",
        "optimiser": f"SGD lr {cfg.lr}, momentum {cfg.momentum}, weight decay {cfg.weight_decay}",
        "LR schedule": f"x{cfg.lr_gamma} at epochs {', '.join(map(str, cfg.lr_milestones))}",
        "loss weights": ", ".join(f"{k} {v:g}" for k, v in cfg.weights.items() if k in ("ce", "kd", "gkd", "cd")),
        "temperatures": f"KD {cfg.kd_temperature:g}, GKD {cfg.gkd_temperature:g}",
        "EDT schedule": cfg.schedule,
    }
    return pd.DataFrame({"setting": list(rows.values())}, index=pd.Index(list(rows), name=""))


def teacher_checkpoint_of(cfg: recipes.RunConfig) -> Optional[str]:
    """The teacher weights a run with ``cfg`` uses: the explicit checkpoint, else the
    one :func:`cdlib.train.run` trains into ``<run_dir>/teacher/model.pt`` (None for a
    pretrained torchvision teacher)."""
    if cfg.teacher_checkpoint:
        return cfg.teacher_checkpoint
    if cfg.teacher_pretrained:
        return None
    return str(runfolder.teacher_dir(cfg.run_dir) / runfolder.MODEL_FILE)


def variant(cfg: recipes.RunConfig, name: str, **changes) -> recipes.RunConfig:
    """A variant of ``cfg`` in its own run folder ``<run_dir>-<name>`` that reuses ``cfg``'s teacher.

    ``fit`` refuses to resume a folder started with other settings, so a run with,
    say, another schedule needs a folder of its own; the teacher is not retrained.
    """
    teacher = teacher_checkpoint_of(cfg)
    if teacher is not None and not Path(teacher).is_file():
        raise ConfigError(
            f"the teacher {teacher} does not exist yet; train it first (cdlib.train.run with {cfg.run_dir!r})."
        )
    return cfg.replace(run_dir=f"{cfg.run_dir}-{name}", teacher_checkpoint=teacher, **changes)


# ------------------------------------------------------------------ loading


def _read_config(run_dir: Union[str, os.PathLike]) -> dict:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; is {run_dir} a cdlib run folder?")
    return json.loads(path.read_text())


def load_teacher(cfg_or_run_dir, device: Optional[torch.device] = None) -> nn.Module:
    """The frozen teacher of a config (or of the run folder of a distilled method), in eval mode."""
    if isinstance(cfg_or_run_dir, recipes.RunConfig):
        cfg = cfg_or_run_dir
        name, pretrained, path = cfg.teacher, cfg.teacher_pretrained, teacher_checkpoint_of(cfg)
    else:
        saved = _read_config(cfg_or_run_dir)
        name, pretrained, path = saved["teacher"], saved.get("teacher_pretrained", False), saved.get("teacher_checkpoint")
    if path:
        model = ckpt.load_model(path, name=name)
    elif pretrained:
        model = models.create(name, num_classes=1000, pretrained=True)
    else:
        raise ConfigError(f"no teacher weights known for {cfg_or_run_dir!r}; train the teacher first.")
    return model.requires_grad_(False).to(device or "cpu").eval()


def load_student(run_dir: Union[str, os.PathLike], device: Optional[torch.device] = None) -> nn.Module:
    """The trained student (``<run_dir>/model.pt``) in eval mode; connectors are not part of it."""
    return ckpt.load_model(Path(run_dir) / "model.pt").to(device or "cpu").eval()


def load_connectors(run_dir_or_checkpoint: Union[str, os.PathLike], device: Optional[torch.device] = None) -> nn.ModuleList:
    """The connectors a CD run trained, from its ``checkpoint.pt`` (``model.pt`` holds the student only).

    Channel counts are read from the 1x1 convolutions' weights, so no model names are needed.
    """
    path = Path(run_dir_or_checkpoint)
    if path.is_dir():
        path = path / "checkpoint.pt"
    saved = ckpt.safe_load(path, "training checkpoint")
    state = saved.get("trainable", {})
    prefix = "connectors."
    indices = sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)})
    if not indices:
        raise CheckpointError(f"{path} holds no connectors: only runs whose method includes 'cd' train them.")
    shapes = [state[f"{prefix}{i}.0.weight"].shape[:2] for i in indices]  # (out, in) of each 1x1 convolution
    modules = nn.ModuleList(Connector(in_c, out_c) for out_c, in_c in shapes)
    modules.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return modules.to(device or "cpu").eval()


def data_for(cfg: recipes.RunConfig, device: Optional[torch.device] = None, batch_size: int = 256) -> SimpleNamespace:
    """The data set of ``cfg`` and three loaders for analysis.

    ``train`` and ``test`` go through the images in order without augmentation;
    ``train_augmented`` is the training loader a run uses (shuffled, augmented).
    """
    device = torch.device(device or "cpu")
    bundle = data_mod.load(cfg.data, root=cfg.data_root, download=cfg.download, image_size=cfg.image_size,
                           **cfg.data_options)
    common = dict(device=device, num_workers=cfg.num_workers, seed=cfg.seed, on_device=cfg.data_on_device)
    return SimpleNamespace(
        bundle=bundle,
        train=data_mod.make_loader(bundle.train, batch_size, train=False, **common),
        test=data_mod.make_loader(bundle.test, batch_size, train=False, **common),
        train_augmented=data_mod.make_loader(bundle.train, min(cfg.batch_size, len(bundle.train)), train=True, **common),
    )


# ------------------------------------------------------------------ runs and tables


def _metrics_of(run: RunLike) -> List[dict]:
    if hasattr(run, "metrics"):
        return list(run.metrics)
    if isinstance(run, (str, os.PathLike)):
        rows = runfolder.read_metrics(run)
        if not rows:
            raise CheckpointError(f"{run} has no metrics.jsonl rows; has the run started?")
        return rows
    return list(run)


def metrics_frame(runs: Mapping[str, RunLike]):
    """All runs' per-epoch metrics as one long pandas DataFrame with a ``run`` column.

    ``runs`` maps a label to a :class:`~cdlib.runfolder.RunResult`, a run folder or a
    list of metric rows. Added columns: ``raw_<term>`` = weighted loss / weight
    (the unweighted loss, where the weight is not 0).
    """
    import pandas as pd

    frames = []
    for label, run in runs.items():
        df = pd.DataFrame(_metrics_of(run))
        for col in [c for c in df.columns if c.startswith("loss_")]:
            term = col[len("loss_"):]
            if f"w_{term}" in df:
                w = df[f"w_{term}"]
                df[f"raw_{term}"] = (df[col] / w).where(w != 0)
        df.insert(0, "run", label)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


TeacherLike = Union[Mapping[str, float], RunLike]


def _summary(run: Union[TeacherLike, None]) -> Dict[str, float]:
    """Last-epoch top-1/top-5, best-epoch top-1 and training minutes of a run; of a mapping (a run's
    ``teacher_metrics``: ``{"top1", "top5"}``) the first two only: it does not say how the teacher trained."""
    if isinstance(run, Mapping):
        return {"top1": run["top1"], "top5": run["top5"]}
    m = _metrics_of(run)
    return {
        "top1": m[-1]["test_top1"],
        "top5": m[-1]["test_top5"],
        "best_top1": max(r["test_top1"] for r in m),
        "minutes": sum(r["epoch_seconds"] for r in m) / 60,
    }


def results_table(runs: Mapping[str, RunLike], teacher: Optional[TeacherLike] = None, baseline: Optional[str] = None):
    """Final test accuracy of each run (and the teacher) as a DataFrame indexed by label.

    Columns: ``top-1 %``, ``top-5 %``, ``Δ top-1`` (points over ``baseline``, the
    first run by default) and ``train min`` (training minutes, all epochs).
    ``teacher`` is the teacher's run (its folder, e.g. ``runfolder.teacher_dir(run_dir)``)
    or, where there is none (a pretrained teacher), its metrics ``{"top1", "top5"}``;
    then the table has no ``train min`` column rather than an empty cell.
    """
    import pandas as pd

    summaries = {} if teacher is None else {"teacher": _summary(teacher)}
    summaries.update({label: _summary(run) for label, run in runs.items()})
    with_minutes = all("minutes" in v for v in summaries.values())
    rows = {
        label: {"top-1 %": v["top1"], "top-5 %": v["top5"], **({"train min": v["minutes"]} if with_minutes else {})}
        for label, v in summaries.items()
    }
    df = pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")
    base = baseline if baseline is not None else next(iter(runs))
    df.insert(2, "Δ top-1", df["top-1 %"] - df.loc[base, "top-1 %"])
    return df


def cost_table(runs: Mapping[str, RunLike], train_images: int, epochs: int):
    """Measured speed of each run and what a full run of ``epochs`` costs at that speed.

    ``images/s`` is the median over epochs of the training throughput a run logged
    (the median shrugs off an epoch slowed by something else on the machine);
    ``hours`` = ``train_images * epochs / images_per_s / 3600``.
    """
    import pandas as pd

    speeds = {label: statistics.median(r["images_per_s"] for r in _metrics_of(run)) for label, run in runs.items()}
    rows = {label: {"images/s": ips, "s / epoch": train_images / ips, "hours": train_images * epochs / ips / 3600}
            for label, ips in speeds.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def paper_comparison(runs: Mapping[str, RunLike], teacher: Optional[TeacherLike], paper: str = "cifar100"):
    """Top-1 / top-5 error (%): the paper's table beside ours, one row per method.

    ``runs`` maps cdlib method names (``"student"``, ``"kd"``, ``"cd+gkd+edt"``...)
    to runs; ``teacher`` is as in :func:`results_table`. Ours are last-epoch errors
    and, beside them, the top-1 error of each run's best epoch: the reference code
    keeps the checkpoint with the best test accuracy and logs that, so the paper's
    numbers may be best-epoch ones. A best epoch picked on the test set flatters a
    run; the last epoch is the honest number. Rows the paper or we lack are NaN.
    """
    import pandas as pd

    table = PAPER_RESULTS[paper]
    ours = {"teacher": _summary(teacher)} if teacher is not None else {}
    ours.update({method: _summary(run) for method, run in runs.items()})
    nan = math.nan
    rows = {}
    for method in dict.fromkeys([*table, *ours]):
        p1, p5 = table.get(method, (nan, nan))
        o = ours.get(method, {})
        rows[method_label(method)] = {
            "paper top-1 err %": p1,
            "paper top-5 err %": nan if p5 is None else p5,
            "ours top-1 err %": 100 - o.get("top1", nan),
            "ours best-epoch top-1 err %": 100 - o.get("best_top1", nan),
            "ours top-5 err %": 100 - o.get("top5", nan),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def connector_table(student: str, teacher: str):
    """Per stage: student and teacher channels, and what the stage's connector costs."""
    import pandas as pd

    s_ch, t_ch = models.stage_channels(student), models.stage_channels(teacher)
    rows = [{"stage": k, "student channels": s, "teacher channels": t,
             "connector parameters": sum(p.numel() for p in c.parameters())}
            for k, (s, t, c) in enumerate(zip(s_ch, t_ch, build_connectors(s_ch, t_ch)), start=1)]
    return pd.DataFrame(rows).set_index("stage")


def cli_command(cfg: recipes.RunConfig, recipe: str, command: str = "distill", width: Optional[int] = None) -> str:
    """The ``cdlib`` command line that runs ``cfg``: the recipe plus every setting that differs from it.

    With ``width``, the command is broken before options into lines of at most
    about that many characters, joined with shell line continuations.
    """
    base = recipes.get(recipe)
    # `--epochs N` alone already moves the milestones, so only milestones that differ from those are written.
    scaled_milestones = recipes.get(recipe, epochs=cfg.epochs).lr_milestones
    options = [f"cdlib {command} --recipe {recipe}"]  # each entry one option with its values
    for f in dataclasses.fields(recipes.RunConfig):
        value = getattr(cfg, f.name)
        default = scaled_milestones if f.name == "lr_milestones" else getattr(base, f.name)
        flag = "--" + f.name.replace("_", "-")
        if value == default or value is None:  # a None setting cannot be written: the recipe's value applies
            continue
        if isinstance(value, bool):
            options.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            options.append(" ".join([flag, *(f"{k}={v}" for k, v in value.items() if default.get(k) != v)]))
        elif isinstance(value, (tuple, list)):
            options.append(" ".join([flag, *map(str, value)]))
        else:
            options.append(f"{flag} {shlex.quote(str(value))}")
    if width is None:
        return " ".join(options)
    lines = [options[0]]
    for option in options[1:]:
        if len(lines[-1]) + 1 + len(option) > width:
            lines.append("    " + option)
        else:
            lines[-1] += " " + option
    return " \\\n".join(lines)


def binomial_se(accuracy_pct: float, n: int) -> float:
    """Standard error (in points) of an accuracy measured on ``n`` independent test images."""
    p = accuracy_pct / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def paired_bootstrap_ratio(a, b, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Dict[str, float]:
    """``mean(a) / mean(b)`` and its percentile bootstrap interval, resampling the pairs ``(a_i, b_i)``.

    ``a`` and ``b`` hold one number per item (e.g. per test image) for two conditions
    measured on the same items. The interval covers which items were drawn, nothing
    else (not another seed, not another training run). Returns ``{"ratio", "low",
    "high", "n"}``.
    """
    a = torch.as_tensor(a, dtype=torch.float64).flatten()
    b = torch.as_tensor(b, dtype=torch.float64).flatten()
    if a.shape != b.shape or a.numel() == 0:
        raise ConfigError(f"paired_bootstrap_ratio needs two equally long, non-empty samples, got {a.numel()} and "
                          f"{b.numel()}.")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, a.numel(), (n_boot, a.numel()), generator=gen)
    ratios = a[idx].mean(1) / b[idx].mean(1)
    tail = (1 - level) / 2
    low, high = torch.quantile(ratios, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"ratio": float(a.mean() / b.mean()), "low": low, "high": high, "n": int(a.numel())}


def contrast_table(contrasts, question: str = ""):
    """The rows of a study's contrasts.csv whose question starts with ``question``, for a page:
    mean paired difference, its 95 % interval, the paired t-test's p, the Holm-adjusted p over the
    whole family, the verdict (from the file, decided on the adjusted p) and the minimum detectable
    effect (80 % power, alpha 0.05)."""
    import pandas as pd

    rows = contrasts[contrasts["question"].str.startswith(question)]
    return pd.DataFrame({
        "pairs": rows["n_pairs"].to_numpy(),
        "a - b (points)": [f"{d:+.2f}" for d in rows["diff_mean"]],
        "95 % CI": [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(rows["ci_low"], rows["ci_high"])],
        "p": [f"{p:.4f}" for p in rows["p"]],
        "Holm p": [f"{p:.4f}" for p in rows["p_holm"]],
        "verdict": rows["verdict"].to_numpy(),
        "MDE": [f"{m:.2f}" for m in rows["mde"]],
    }, index=pd.Index(rows["contrast"], name="contrast (a - b)"))


def contrast_words(row) -> str:
    """One row of contrasts.csv as a clause for a page: the numbers and the file's verdict."""
    return (f"{row.contrast}: {row.diff_mean:+.2f} points, 95 % CI [{row.ci_low:.2f}, {row.ci_high:.2f}], "
            f"p = {row.p:.3f}, Holm-adjusted p = {row.p_holm:.3f}: {row.verdict}")
