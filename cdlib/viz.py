"""The plots the book shows, so that notebooks stay short.

Every function draws with matplotlib (seaborn where it helps) and returns the
Figure (several panels) or the Axes (one panel) it drew on. Functions that take
``ax=`` draw into an existing Axes. The ``*_explorer`` functions return
ipywidgets controls for Jupyter and Colab; a static HTML page cannot run them,
so the book always draws a static figure as well.
"""

from __future__ import annotations

import numbers
from typing import Mapping, Optional, Sequence, Union

import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "use_book_style",
    "glue",
    "attention_heatmaps",
    "attention_profile",
    "attention_explorer",
    "similarity_chart",
    "schedule_plot",
    "schedule_explorer",
    "learning_curves",
    "ablation_chart",
    "probability_histogram",
    "seed_comparison",
    "term_curves",
]

TERM_NAMES = {"ce": "CE (the labels)", "cd": "CD", "gkd": "GKD", "kd": "KD", "at": "AT", "fitnets": "FitNets"}
TERM_LABELS = {"ce": r"$\alpha$ (cross-entropy)", "cd": r"$\lambda_{\mathrm{CD}}$", "gkd": r"$\beta$ (GKD)"}


def use_book_style() -> None:
    """Seaborn's white-grid theme with a colour-blind-safe palette, as the book uses it."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 100, "axes.titlesize": "medium"})


def glue(name: str, value, display: bool = False) -> None:
    """myst-nb's ``glue`` where it is installed (the book build), a no-op elsewhere (e.g. Colab).

    NumPy and torch scalars are turned into Python numbers first, so the book's
    ``{glue:text}`key:.2f``` can format them.
    """
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = int(value) if isinstance(value, numbers.Integral) else float(value)
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return
    _glue(name, value, display=display)


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


# ------------------------------------------------------------------ channel attention


def _pick_samples(labels, per_class: Optional[int], max_samples: int, n: int) -> np.ndarray:
    if labels is None:
        return np.arange(min(max_samples, n))
    labels = _np(labels).astype(int)
    if per_class is None:
        idx = np.arange(min(max_samples, len(labels)))
    else:
        idx = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])[:max_samples]
    return idx[np.argsort(labels[idx], kind="stable")]


def _order_and_scale(panels: Sequence[np.ndarray]):
    """Channels by the first panel's mean attention, largest first, and one colour scale for all panels."""
    order = np.argsort(-panels[0].mean(axis=0), kind="stable")
    return order, float(np.quantile(np.concatenate([p.ravel() for p in panels]), 0.99)) or 1.0


def attention_heatmaps(attentions: Mapping[str, Sequence], labels=None, per_class: Optional[int] = None,
                       max_samples: int = 32, class_names: Optional[Sequence[str]] = None):
    """Channel attention as heatmaps: one row per source, one column per stage.

    ``attentions`` maps a source name (``"teacher"``, ``"student + CD"``...) to its
    per-stage (N, C_k) attention; all sources must share C_k per stage (students
    through connectors). Each panel is samples x channels. Within a stage, every
    row uses the same colour scale and channel order (by the first source's mean
    attention, largest first), so rows compare directly. Samples: up to
    ``per_class`` of each class or the first ``max_samples``, sorted by label.
    Returns the Figure.
    """
    names = list(attentions)
    first = attentions[names[0]]
    stages = range(1, len(first) + 1)
    idx = _pick_samples(labels, per_class, max_samples, len(first[0]))
    fig, axes = plt.subplots(
        len(names), len(stages), figsize=(2.4 * len(stages) + 1.0, 1.8 * len(names) + 1.1),
        squeeze=False, constrained_layout=True,
    )
    for j, stage in enumerate(stages):
        panels = [_np(attentions[n][stage - 1])[idx] for n in names]
        if any(p.shape[1] != panels[0].shape[1] for p in panels):
            raise ValueError(f"stage {stage}: sources have different channel counts; pass students through connectors.")
        order, vmax = _order_and_scale(panels)
        for i, (name, panel) in enumerate(zip(names, panels)):
            ax = axes[i, j]
            im = ax.imshow(panel[:, order], aspect="auto", interpolation="nearest", cmap="viridis", vmin=0.0, vmax=vmax)
            ax.grid(False)
            if i == 0:
                ax.set_title(f"stage {stage} ({panel.shape[1]} channels)")
            if i == len(names) - 1:
                ax.set_xlabel("channel (sorted)")
            else:
                ax.set_xticks([])
            ax.set_yticks([])
            if labels is not None:
                # one tick per run of equal labels, at its middle; thin lines between classes
                lab = _np(labels).astype(int)[idx]
                starts = [0] + [k for k in range(1, len(lab)) if lab[k] != lab[k - 1]]
                ends = starts[1:] + [len(lab)]
                for s in starts[1:]:
                    ax.axhline(s - 0.5, color="white", lw=0.8)
                if j == 0 and len(starts) <= 30:
                    ax.set_yticks([(s + e - 1) / 2 for s, e in zip(starts, ends)],
                                  [class_names[lab[s]] if class_names else str(lab[s]) for s in starts], fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{name}\n" + ("samples by class" if labels is not None else "samples"), fontsize="small")
        fig.colorbar(im, ax=axes[:, j], orientation="horizontal", fraction=0.05, pad=0.02, aspect=25, label="attention")
    return fig


def attention_profile(attentions: Mapping[str, Sequence], stage: int, sample: int, ax=None, labels=None, class_names=None):
    """One sample's attention vector at one stage, for every source.

    Channels are sorted by the first source's (the teacher's) attention for this
    sample, largest first, so the teacher draws a falling curve and a student that
    agrees with it stays on that curve. Returns the Axes.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 3.3), layout="constrained")
    names = list(attentions)
    ref = _np(attentions[names[0]][stage - 1])[sample]
    order = np.argsort(-ref, kind="stable")
    ax.plot(ref[order], lw=2.5, color="0.2", label=names[0], zorder=3)
    for name in names[1:]:
        ax.plot(_np(attentions[name][stage - 1])[sample, order], ls="", marker="o", ms=3.5, alpha=0.75, label=name)
    title = f"stage {stage}, test image {sample}"
    if labels is not None:
        c = int(_np(labels)[sample])
        title += f" (class {class_names[c] if class_names else c})"
    ax.set(title=title, xlabel="channel, sorted by the teacher's attention for this image", ylabel="attention $w_c$")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax


def _png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed (it is not also drawn in the cell)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _figure_explorer(render, controls: Mapping[str, object]):
    """Controls above an image that ``render(**values) -> Figure`` redraws on every change.

    The figure travels as a PNG in an ``ipywidgets.Image`` rather than through an
    ``Output`` widget: capturing figures in an Output widget while papermill runs
    the cell can leave the run waiting for a reply that never comes (seen with
    ipykernel 7 / nbclient 0.11), which would hang the book's build.
    """
    import ipywidgets as widgets

    image = widgets.Image(format="png")

    def update(change=None) -> None:
        image.value = _png(render(**{name: c.value for name, c in controls.items()}))

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
        sample = int(pool[min(sample, len(pool) - 1)])
        fig = plt.figure(figsize=(11, 4.2), layout="constrained")
        left, right = fig.subfigures(1, 2, width_ratios=[1, 1.3])
        shown = pool[:32]
        axes = left.subplots(len(attentions), 1, squeeze=False)[:, 0]
        panels = [_np(att[stage - 1])[shown] for att in attentions.values()]
        order, vmax = _order_and_scale(panels)
        for ax, name, panel in zip(axes, attentions, panels):
            ax.imshow(panel[:, order], aspect="auto", cmap="viridis", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_ylabel(name, fontsize="small")
            ax.set_xticks([]), ax.grid(False)
        axes[0].set_title(f"stage {stage}: {len(shown)} samples x channels")
        attention_profile(attentions, stage, sample, ax=right.subplots(), labels=labels_np, class_names=class_names)
        return fig

    return _figure_explorer(render, {
        "stage": widgets.Dropdown(options=list(range(1, n_stages + 1)), value=n_stages, description="stage"),
        "cls": widgets.Dropdown(options=classes, value=-1, description="class"),
        "sample": widgets.IntSlider(min=0, max=31, value=0, description="sample #"),
    })


def similarity_chart(rows, condition: str = "condition"):
    """Grouped bars per stage: CD loss term (log scale) and mean cosine similarity, one colour per condition.

    ``rows``: a DataFrame or a list of dicts with ``stage``, ``cd``, ``cosine`` and ``condition``.
    """
    import pandas as pd
    import seaborn as sns

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
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
    if legend is None:
        return
    handles, labels = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
    legend.remove()
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)


# ------------------------------------------------------------------ schedules


def schedule_plot(schedules: Mapping[str, object], epochs: Union[int, Mapping[str, int]],
                  terms: Sequence[str] = ("ce", "cd", "gkd")):
    """Loss weight against epoch, one panel per term, one line per schedule.

    ``schedules`` maps a label to a schedule (``schedule(epoch) -> {term: weight}``);
    ``epochs`` is the length of every schedule, or a mapping label -> length.
    Staircases show their steps because each curve is sampled 20 times an epoch.
    Returns the Figure.
    """
    fig, (axes,) = plt.subplots(1, len(terms), figsize=(4.0 * len(terms), 3.4), sharex=True, constrained_layout=True,
                                squeeze=False)
    styles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1))]
    for i, (label, sched) in enumerate(schedules.items()):
        n = epochs[label] if isinstance(epochs, Mapping) else epochs
        x = np.linspace(1, n + 1, int(n * 20) + 1)[:-1]
        values = [sched(float(e)) for e in x]
        for ax, term in zip(axes, terms):
            ax.plot(x, [v.get(term, np.nan) for v in values], lw=2, ls=styles[i % len(styles)], label=label)
    for ax, term in zip(axes, terms):
        ax.set(xlabel="epoch", title=TERM_LABELS.get(term, term))
        ax.set_ylim(bottom=-0.05 * max(ax.get_ylim()[1], 1e-9))
    axes[0].set_ylabel("loss weight")
    axes[-1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return fig


def schedule_explorer(names: Optional[Sequence[str]] = None, epochs: int = 200, cd0: float = 6.0):
    """An ipywidgets control: pick schedules, the number of epochs and the initial CD weight."""
    import ipywidgets as widgets

    from . import schedules as sched_mod

    names = list(names or sched_mod.names())

    def render(chosen, epochs, cd0):
        if not chosen:
            fig, ax = plt.subplots(figsize=(6, 1))
            ax.axis("off")
            ax.text(0.5, 0.5, "pick at least one schedule", ha="center", va="center")
            return fig
        return schedule_plot({n: sched_mod.get(n, epochs=epochs, cd0=cd0) for n in chosen}, epochs)

    return _figure_explorer(render, {
        "chosen": widgets.SelectMultiple(options=names, value=tuple(names[:3]), rows=len(names), description="schedules"),
        "epochs": widgets.IntSlider(min=10, max=300, step=10, value=epochs, description="epochs"),
        "cd0": widgets.FloatSlider(min=0.5, max=12.0, step=0.5, value=cd0, description="λ_CD at start"),
    })


# ------------------------------------------------------------------ training runs


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
        sns.lineplot(data=frame, x="epoch", y=col, hue=hue, style=hue, markers=True, dashes=False, markersize=5, ax=ax, legend=k == 0)
        ax.set(ylabel=names.get(col, col))
        if col in logy:
            ax.set_yscale("log")
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

    series = table[value] if isinstance(table, pd.DataFrame) else pd.Series(dict(table))
    series = series.drop("teacher", errors="ignore")
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.45 * len(series) + 1.3), constrained_layout=True)
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
    """Histograms of probabilities (0..1), one colour per group; each group's bars add up to 100 %.

    Groups of very different sizes (thousands of right answers, a handful of wrong
    ones) stay comparable because every group is normalised on its own.
    """
    import pandas as pd
    import seaborn as sns

    df = pd.concat([pd.DataFrame({"p": _np(v), "group": k}) for k, v in groups.items()], ignore_index=True)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.4), constrained_layout=True)
    sns.histplot(data=df, x="p", hue="group", bins=bins, binrange=(0, 1), element="bars", alpha=0.45, stat="percent", common_norm=False, ax=ax)
    ax.set(xlabel=xlabel, ylabel="% of the group's samples", xlim=(0, 1))
    if ax.get_legend() is not None:
        # Beside the panel: inside it, the legend can sit on the bars.
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1.0), title=None, frameon=False, fontsize="small")
    return ax


def seed_comparison(per_seed, summary, ax=None, value: str = "top1", baseline: Optional[str] = None):
    """One dot per seed and, per method, the mean with its 95 % t-interval (from :mod:`cdlib.seeds`).

    ``per_seed``: a DataFrame with columns method, seed and ``value``;
    ``summary``: the matching summary from :func:`cdlib.seeds.summarize` (its
    ``top1_mean``, ``top1_ci_low``/``top1_ci_high``). ``baseline``
    draws that method's mean as a dotted line. Returns the Axes.
    """
    import pandas as pd
    import seaborn as sns

    frame = pd.DataFrame(per_seed)
    order = list(summary["method"])
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.5 * len(order) + 1.3), constrained_layout=True)
    sns.stripplot(data=frame, x=value, y="method", order=order, color="0.55", size=5, jitter=0.12, ax=ax, zorder=2)
    mean = summary["top1_mean"].to_numpy(float)
    low, high = summary["top1_ci_low"].to_numpy(float), summary["top1_ci_high"].to_numpy(float)
    err = np.vstack([mean - low, high - mean])
    ax.errorbar(mean, np.arange(len(order)), xerr=np.nan_to_num(err), fmt="D", ms=7, capsize=5, color="C3", zorder=3,
                label="mean, 95 % t-interval")
    if baseline is not None and baseline in order:
        ax.axvline(mean[order.index(baseline)], ls=":", color="0.3", lw=1.2)
    ax.set(xlabel="final test top-1 % (one dot per seed)", ylabel="")
    # The legend sits above the panel, clear of the data and of the x-axis label.
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", ms=5, color="0.55", label="one seed"),
               Line2D([], [], ls="-", marker="D", ms=7, color="C3", label="mean, 95 % t-interval")]
    if baseline is not None and baseline in order:
        handles.append(Line2D([], [], ls=":", color="0.3", lw=1.2, label=f"mean of {baseline}"))
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=len(handles),
              frameon=False, fontsize="small", borderaxespad=0.0)
    return ax


def term_curves(frame, terms: Sequence[str] = ("ce", "cd", "gkd"), run: str = "run"):
    """Each loss term per epoch: raw (top row) and weighted (bottom row), one column per run.

    ``frame``: :func:`cdlib.analysis.metrics_frame` (its ``raw_<term>``, ``loss_<term>``
    columns). Log scale; epochs where a term was not computed (weight 0) are gaps.
    Returns the Figure; the legend (one colour per term) sits under the panels.
    """
    runs = list(dict.fromkeys(frame[run]))
    fig, axes = plt.subplots(2, len(runs), figsize=(5.2 * len(runs), 6.2), sharex=True, sharey="row",
                             layout="constrained", squeeze=False)
    markers = ["o", "s", "^", "D", "v", "P"]
    rows = (("raw_", "raw (unweighted)"), ("loss_", "weighted"))
    for j, label in enumerate(runs):
        df = frame[frame[run] == label]
        for i, (prefix, row_label) in enumerate(rows):
            ax = axes[i, j]
            positive = False
            for k, term in enumerate(terms):
                col = prefix + term
                y = df[col].where(df[col] > 0) if col in df else np.full(len(df), np.nan)
                positive = positive or bool(np.isfinite(np.asarray(y, float)).any())
                ax.plot(df["epoch"], y, marker=markers[k % len(markers)], ms=4, lw=1.6, color=f"C{k}",
                        label=TERM_NAMES.get(term, term))
            if positive:
                ax.set_yscale("log")
            if j == 0:
                ax.set_ylabel(row_label)
            if i == 0:
                ax.set_title(label)
            else:
                ax.set_xlabel("epoch")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(terms), frameon=False)
    return fig
