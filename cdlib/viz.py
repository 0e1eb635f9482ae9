"""The plots the book shows, so that notebooks stay short.

Every function draws with matplotlib (seaborn where it helps) and returns the Figure (several panels) or the
Axes (one panel) it drew on; those that take ``ax=`` draw into an existing Axes. The ``*_explorer`` functions
return ipywidgets controls for Jupyter and Colab; a static HTML page cannot run them, so the book always draws
a static figure as well.
"""

from __future__ import annotations

import io
from typing import Mapping, Optional, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["use_book_style", "glue", "attention_heatmaps", "attention_profile", "attention_explorer", "similarity_chart",
           "schedule_plot", "schedule_explorer", "learning_curves", "ablation_chart", "probability_histogram",
           "seed_comparison", "term_curves"]

TERM_NAMES = {"ce": "CE (the labels)", "cd": "CD", "gkd": "GKD", "kd": "KD", "at": "AT", "fitnets": "FitNets"}
TERM_LABELS = {"ce": r"$\alpha$ (cross-entropy)", "cd": r"$\lambda_{\mathrm{CD}}$", "gkd": r"$\beta$ (GKD)"}
# Beside the panel: inside it, the legend can sit on the lines or bars.
LEGEND_BESIDE = dict(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize="small")


def use_book_style() -> None:
    """Seaborn's white-grid theme with a colour-blind-safe palette, as the book uses it."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "axes.titlesize": "medium"})


def glue(name: str, value, display: bool = False) -> None:
    """myst-nb's ``glue`` where it is installed (the book build), a no-op elsewhere (e.g. Colab). NumPy and torch
    scalars are turned into Python numbers first, so the book's ``{glue:text}`key:.2f``` can format them."""
    value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 else value
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return
    _glue(name, value, display=display)


def _np(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=float)


def _heatmap_column(axes, panels: Sequence[np.ndarray]):
    """Samples x channels panels down ``axes``, all in one channel order (by the first panel's mean attention,
    largest first) and one colour scale, so they compare directly; x ticks under the last only. Returns its image."""
    order = np.argsort(-panels[0].mean(axis=0), kind="stable")
    vmax = float(np.quantile(np.concatenate([p.ravel() for p in panels]), 0.99)) or 1.0
    for ax, panel in zip(axes, panels):
        image = ax.imshow(panel[:, order], aspect="auto", interpolation="nearest", cmap="viridis", vmin=0.0, vmax=vmax)
        ax.grid(False)
    plt.setp(axes[:-1], xticks=[])
    return image


def attention_heatmaps(attentions: Mapping[str, Sequence], labels=None, per_class: Optional[int] = None,
                       max_samples: int = 32, class_names: Optional[Sequence[str]] = None):
    """Channel attention as samples x channels heatmaps, one row per source, one column per stage; returns the Figure.

    ``attentions`` maps a source name (``"teacher"``, ``"student + CD"``...) to its per-stage (N, C_k) attention;
    all sources must share C_k per stage (students through connectors). A stage's rows share a colour scale and
    channel order. Samples: up to ``per_class`` of each class or the first ``max_samples``, sorted by label.
    """
    names = list(attentions)
    n_stages = len(attentions[names[0]])
    idx = np.arange(min(max_samples, len(attentions[names[0]][0])))
    if labels is not None:
        labels = _np(labels).astype(int)
        if per_class is not None:
            idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])[:max_samples]
        idx = idx[np.argsort(labels[idx], kind="stable")]
        starts = np.r_[0, np.flatnonzero(np.diff(labels[idx])) + 1]  # where each run of one class begins
    fig, axes = plt.subplots(len(names), n_stages, figsize=(2.4 * n_stages + 1.0, 1.8 * len(names) + 1.1),
                             squeeze=False, layout="constrained", subplot_kw={"yticks": []})
    for j in range(n_stages):
        panels = [_np(attentions[n][j])[idx] for n in names]
        if any(p.shape[1] != panels[0].shape[1] for p in panels):
            raise ValueError(f"stage {j + 1}: sources have different channel counts; pass students through connectors.")
        image = _heatmap_column(axes[:, j], panels)
        axes[0, j].set_title(f"stage {j + 1} ({panels[0].shape[1]} channels)")
        axes[-1, j].set_xlabel("channel (sorted)")
        fig.colorbar(image, ax=axes[:, j], orientation="horizontal", fraction=0.05, pad=0.02, aspect=25, label="attention")
        for ax in (axes[:, j] if labels is not None else []):  # thin lines between classes
            ax.hlines(starts[1:] - 0.5, -0.5, panels[0].shape[1] - 0.5, color="white", lw=0.8)
    for ax, name in zip(axes[:, 0], names):
        ax.set_ylabel(f"{name}\n" + ("samples by class" if labels is not None else "samples"), fontsize="small")
        if labels is not None and len(starts) <= 30:  # one tick per class, in the middle of its rows
            ax.set_yticks((starts + np.append(starts[1:], len(idx)) - 1) / 2,
                          [class_names[c] if class_names else str(c) for c in labels[idx][starts]], fontsize=7)
    return fig


def attention_profile(attentions: Mapping[str, Sequence], stage: int, sample: int, ax=None, labels=None, class_names=None):
    """One sample's attention vector at one stage, for every source; returns the Axes.

    Channels are sorted by the first source's (the teacher's) attention for this sample, largest first, so the
    teacher draws a falling curve and a student that agrees with it stays on that curve.
    """
    ax = ax if ax is not None else plt.subplots(figsize=(9, 3.3), layout="constrained")[1]
    names = list(attentions)
    ref = _np(attentions[names[0]][stage - 1])[sample]
    order = np.argsort(-ref, kind="stable")
    ax.plot(ref[order], lw=2.5, color="0.2", label=names[0], zorder=3)
    for name in names[1:]:
        ax.plot(_np(attentions[name][stage - 1])[sample, order], ls="", marker="o", ms=3.5, alpha=0.75, label=name)
    c = None if labels is None else int(_np(labels)[sample])
    title = f"stage {stage}, test image {sample}" + ("" if c is None else f" (class {class_names[c] if class_names else c})")
    ax.set(title=title, xlabel="channel, sorted by the teacher's attention for this image", ylabel="attention $w_c$")
    ax.legend(**LEGEND_BESIDE)
    return ax


def _figure_explorer(render, controls: Mapping[str, object]):
    """Controls above an image that ``render(**values) -> Figure`` redraws on every change.

    The figure travels as a PNG in an ``ipywidgets.Image`` rather than through an ``Output`` widget: capturing
    figures in an Output widget while papermill runs the cell can leave the run waiting for a reply that never
    comes (seen with ipykernel 7 / nbclient 0.11), which would hang the book's build.
    """
    import ipywidgets as widgets

    image = widgets.Image(format="png")

    def update(change=None) -> None:
        fig, buffer = render(**{name: c.value for name, c in controls.items()}), io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)  # shown in the image only, not drawn in the cell as well
        image.value = buffer.getvalue()

    for control in controls.values():
        control.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox(list(controls.values())), image])


def attention_explorer(attentions: Mapping[str, Sequence], labels, class_names: Optional[Sequence[str]] = None):
    """An ipywidgets control: pick a stage, a class and a sample; shows heatmaps and the sample's profile."""
    import ipywidgets as widgets

    labels_np = _np(labels).astype(int)
    n_stages = len(next(iter(attentions.values())))
    classes = [("all", -1)] + [(class_names[c] if class_names else str(c), int(c)) for c in np.unique(labels_np)]

    def render(stage: int, cls: int, sample: int):
        pool = np.arange(len(labels_np)) if cls < 0 else np.flatnonzero(labels_np == cls)
        fig = plt.figure(figsize=(11, 4.2), layout="constrained")
        left, right = fig.subfigures(1, 2, width_ratios=[1, 1.3])
        axes = left.subplots(len(attentions), 1, squeeze=False)[:, 0]
        _heatmap_column(axes, [_np(att[stage - 1])[pool[:32]] for att in attentions.values()])
        for ax, name in zip(axes, attentions):
            ax.set_ylabel(name, fontsize="small")
        axes[0].set_title(f"stage {stage}: {len(pool[:32])} samples x channels")
        attention_profile(attentions, stage, int(pool[min(sample, len(pool) - 1)]), ax=right.subplots(),
                          labels=labels_np, class_names=class_names)
        return fig

    return _figure_explorer(render, {
        "stage": widgets.Dropdown(options=list(range(1, n_stages + 1)), value=n_stages, description="stage"),
        "cls": widgets.Dropdown(options=classes, value=-1, description="class"),
        "sample": widgets.IntSlider(min=0, max=31, value=0, description="sample #"),
    })


def similarity_chart(rows, condition: str = "condition"):
    """Grouped bars per stage: CD loss term (log scale) and mean cosine similarity, one colour per condition.
    ``rows``: a DataFrame or a list of dicts with ``stage``, ``cd``, ``cosine`` and ``condition``."""
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    sns.barplot(data=df, x="stage", y="cd", hue=condition, ax=ax1)
    ax1.set(yscale="log", ylabel="CD term (mean squared difference)", title="distance to the teacher (lower is closer)")
    ax1.yaxis.set_minor_formatter(plt.NullFormatter())
    sns.barplot(data=df, x="stage", y="cosine", hue=condition, ax=ax2, legend=False)
    ax2.set(ylim=(0, 1.02), ylabel="mean cosine similarity", title="direction agreement (1 = same direction)")
    _legend_below(fig, ax1, ncol=2)
    return fig


def _legend_below(fig, ax, ncol: int) -> None:
    """Move ``ax``'s legend under the figure's panels (constrained layout makes room for it)."""
    legend = ax.get_legend()
    legend.remove()
    fig.legend(legend.legend_handles, [t.get_text() for t in legend.get_texts()], loc="outside lower center",
               ncol=ncol, frameon=False)


def schedule_plot(schedules: Mapping[str, object], epochs: Union[int, Mapping[str, int]],
                  terms: Sequence[str] = ("ce", "cd", "gkd")):
    """Loss weight against epoch, one panel per term, one line per schedule; returns the Figure.

    ``schedules`` maps a label to a schedule (``schedule(epoch) -> {term: weight}``); ``epochs`` is the length of
    every schedule, or a mapping label -> length. Each curve is sampled 20 times an epoch, so staircases show steps.
    """
    fig, (axes,) = plt.subplots(1, len(terms), figsize=(4.0 * len(terms), 3.4), sharex=True, layout="constrained",
                                squeeze=False)
    styles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1))]
    for i, (label, sched) in enumerate(schedules.items()):
        n = epochs[label] if isinstance(epochs, Mapping) else epochs
        x = np.linspace(1, n + 1, int(n * 20) + 1)[:-1]
        values = [sched(float(e)) for e in x]
        for ax, term in zip(axes, terms):
            ax.plot(x, [v.get(term, np.nan) for v in values], lw=2, ls=styles[i % len(styles)], label=label)
    for ax, term in zip(axes, terms):
        ax.set(xlabel="epoch", title=TERM_LABELS.get(term, term), ylim=(-0.05 * max(ax.get_ylim()[1], 1e-9), None))
    axes[0].set_ylabel("loss weight")
    axes[-1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return fig


def schedule_explorer(names: Optional[Sequence[str]] = None, epochs: int = 200, cd0: float = 6.0):
    """An ipywidgets control: pick schedules, the number of epochs and the initial CD weight."""
    import ipywidgets as widgets

    from . import schedules as sched_mod

    names = list(names or sched_mod.names())

    def render(chosen, epochs, cd0):
        if chosen:
            return schedule_plot({n: sched_mod.get(n, epochs=epochs, cd0=cd0) for n in chosen}, epochs)
        fig = plt.figure(figsize=(6, 1))
        fig.text(0.5, 0.5, "pick at least one schedule", ha="center", va="center")
        return fig

    return _figure_explorer(render, {
        "chosen": widgets.SelectMultiple(options=names, value=tuple(names[:3]), rows=len(names), description="schedules"),
        "epochs": widgets.IntSlider(min=10, max=300, step=10, value=epochs, description="epochs"),
        "cd0": widgets.FloatSlider(min=0.5, max=12.0, step=0.5, value=cd0, description="λ_CD at start"),
    })


def learning_curves(frame, y: Union[str, Sequence[str]] = "test_top1", hue: str = "run",
                    ylims: Optional[Mapping[str, tuple]] = None, logy: Sequence[str] = ()):
    """Per-epoch metrics of several runs (a :func:`cdlib.analysis.metrics_frame`), one panel per metric.

    ``ylims`` fixes a panel's range, ``logy`` names the metrics drawn on a log scale.
    Returns the Figure; panels share the epoch axis, the legend sits under the panels.
    """
    import seaborn as sns

    ys = [y] if isinstance(y, str) else list(y)
    names = {"test_top1": "test top-1 accuracy (%)", "test_top5": "test top-5 (%)", "train_top1": "train top-1 (%)",
             "test_loss": "test cross-entropy", "train_loss": "training loss (weighted sum)",
             "w_cd": r"$\lambda_{\mathrm{CD}}$", "raw_cd": "CD loss (unweighted)", "lr": "learning rate"}
    fig, (axes,) = plt.subplots(1, len(ys), figsize=(5.2 * len(ys), 4.2), sharex=True, layout="constrained", squeeze=False)
    for k, (ax, col) in enumerate(zip(axes, ys)):
        sns.lineplot(data=frame, x="epoch", y=col, hue=hue, style=hue, markers=True, dashes=False, markersize=5, ax=ax,
                     legend=k == 0)
        ax.set(ylabel=names.get(col, col), yscale="log" if col in logy else "linear")
        if ylims and col in ylims:
            ax.set_ylim(*ylims[col])
    _legend_below(fig, axes[0], ncol=min(len(frame[hue].unique()), 3))
    return fig


def ablation_chart(table, value: str = "top-1 %", teacher: Optional[float] = None, ax=None, error: Optional[float] = None):
    """Final accuracy per method as a dot plot with the values written beside the dots.

    ``table``: a DataFrame indexed by method (e.g. :func:`cdlib.analysis.results_table`),
    or a mapping method -> value. The teacher, if given, is a dashed line. ``error``
    draws ± that many points as a bar (e.g. the binomial standard error).
    """
    import pandas as pd

    series = (table[value] if isinstance(table, pd.DataFrame) else pd.Series(dict(table))).drop("teacher", errors="ignore")
    ax = ax if ax is not None else plt.subplots(figsize=(7, 0.45 * len(series) + 1.3), layout="constrained")[1]
    ypos = np.arange(len(series))[::-1]
    ax.errorbar(series.values, ypos, xerr=error, fmt="o", ms=8, capsize=4, color="C0", zorder=3)
    for yv, v in zip(ypos, series.values):
        ax.annotate(f"{v:.2f}", (v, yv), xytext=(8, 6), textcoords="offset points", fontsize="small")
    ax.set_yticks(ypos, series.index)
    if teacher is not None:
        ax.axvline(teacher, ls="--", color="0.3", lw=1.2)
        ax.annotate(f"teacher {teacher:.2f}", (teacher, ypos.max() + 0.45), ha="center", fontsize="small", color="0.3")
    lo = min(series.min(), teacher if teacher is not None else series.min())
    hi = max(series.max(), teacher if teacher is not None else series.max())
    pad = max(0.6, 0.15 * (hi - lo)) + (error or 0)
    right = hi + 2 * pad
    if value.endswith("%") and hi <= 100:
        right = min(right, 100.0 + 0.25 * pad)  # an accuracy axis need not run far past 100 %
    ax.set(xlim=(lo - pad, right), ylim=(-0.7, len(series) - 0.2), xlabel=value)
    return ax


def probability_histogram(groups: Mapping[str, Sequence[float]], ax=None, bins: int = 20, xlabel: str = "probability"):
    """Histograms of probabilities (0..1), one colour per group; each group's bars add up to 100 %, so groups of
    very different sizes (thousands of right answers, a handful of wrong ones) stay comparable."""
    import pandas as pd
    import seaborn as sns

    df = pd.concat([pd.DataFrame({"p": _np(v), "group": k}) for k, v in groups.items()], ignore_index=True)
    ax = ax if ax is not None else plt.subplots(figsize=(7, 3.4), layout="constrained")[1]
    sns.histplot(data=df, x="p", hue="group", bins=bins, binrange=(0, 1), element="bars", alpha=0.45, stat="percent",
                 common_norm=False, ax=ax)
    ax.set(xlabel=xlabel, ylabel="% of the group's samples", xlim=(0, 1))
    sns.move_legend(ax, title=None, **LEGEND_BESIDE)
    return ax


def seed_comparison(per_seed, summary, ax=None, value: str = "top1", baseline: Optional[str] = None):
    """One dot per seed and, per method, the mean with its 95 % t-interval (from :mod:`cdlib.seeds`); returns the Axes.

    ``per_seed``: a DataFrame with columns method, seed and ``value``; ``summary``: the matching summary from
    :func:`cdlib.seeds.summarize` (``top1_mean``, ``top1_ci_low``, ``top1_ci_high``). ``baseline`` draws that
    method's mean as a dotted line.
    """
    import pandas as pd
    import seaborn as sns

    order = list(summary["method"])
    ax = ax if ax is not None else plt.subplots(figsize=(7, 0.5 * len(order) + 1.3), layout="constrained")[1]
    sns.stripplot(data=pd.DataFrame(per_seed), x=value, y="method", order=order, color="0.55", size=5, jitter=0.12,
                  ax=ax, zorder=2)
    mean = summary["top1_mean"].to_numpy(float)
    err = np.vstack([mean - summary["top1_ci_low"].to_numpy(float), summary["top1_ci_high"].to_numpy(float) - mean])
    ax.collections[0].set_label("one seed")  # stripplot draws one collection per method
    ax.errorbar(mean, np.arange(len(order)), xerr=np.nan_to_num(err), fmt="D", ms=7, capsize=5, color="C3", zorder=3)
    handles = [ax.collections[0], plt.Line2D([], [], marker="D", ms=7, color="C3", label="mean, 95 % t-interval")]
    if baseline is not None and baseline in order:
        handles.append(ax.axvline(mean[order.index(baseline)], ls=":", color="0.3", lw=1.2, label=f"mean of {baseline}"))
    ax.set(xlabel="final test top-1 % (one dot per seed)", ylabel="")
    # The legend sits above the panel, clear of the data and of the x-axis label.
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=len(handles),
              frameon=False, fontsize="small", borderaxespad=0.0)
    return ax


def term_curves(frame, terms: Sequence[str] = ("ce", "cd", "gkd"), run: str = "run"):
    """Each loss term per epoch: raw (top row) and weighted (bottom row), one column per run; returns the Figure.

    ``frame``: :func:`cdlib.analysis.metrics_frame` (its ``raw_<term>``, ``loss_<term>`` columns). Log scale; epochs
    where a term was not computed (weight 0) are gaps. The legend (one colour per term) sits under the panels.
    """
    runs = list(dict.fromkeys(frame[run]))
    fig, axes = plt.subplots(2, len(runs), figsize=(5.2 * len(runs), 6.2), sharex=True, sharey="row",
                             layout="constrained", squeeze=False)
    for j, label in enumerate(runs):
        df = frame[frame[run] == label]
        for ax, prefix, row in zip(axes[:, j], ("raw_", "loss_"), ("raw (unweighted)", "weighted")):
            ax.set_ylabel(row if j == 0 else "")
            for k, term in enumerate(terms):
                y = df[prefix + term].where(df[prefix + term] > 0) if prefix + term in df else np.full(len(df), np.nan)
                ax.plot(df["epoch"], y, marker="os^DvP"[k % 6], ms=4, lw=1.6, color=f"C{k}",
                        label=TERM_NAMES.get(term, term))
            if any(np.isfinite(np.asarray(line.get_ydata(), float)).any() for line in ax.get_lines()):
                ax.set_yscale("log")  # not where nothing is positive: a log axis needs a value to show
        axes[0, j].set_title(label)
        axes[1, j].set_xlabel("epoch")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=len(terms), frameon=False)
    return fig
