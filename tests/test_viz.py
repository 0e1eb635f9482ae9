"""cdlib.viz: every plot draws what it is given — panels, lines, pixels — and returns it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from cdlib import schedules, viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _attention(n=12, channels=(4, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, c, generator=g) for c in channels]


def test_attention_heatmaps_grid_and_pixels():
    teacher, student = _attention(seed=0), _attention(seed=1)
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0, 1, 2, 0, 1, 2])
    fig = viz.attention_heatmaps({"teacher": teacher, "student": student}, labels, per_class=2)
    images = [ax for ax in fig.axes if ax.get_images()]
    assert len(images) == 4  # 2 sources x 2 stages (the rest are colour bars)
    first = images[0].get_images()[0].get_array()
    assert first.shape == (6, 4)  # 2 per class x 3 classes, 4 channels
    # rows are grouped by class; channels sorted by the teacher's mean attention, largest first
    picked = np.concatenate([np.flatnonzero(labels.numpy() == c)[:2] for c in range(3)])
    order = np.argsort(-teacher[0].numpy()[picked].mean(0), kind="stable")
    np.testing.assert_allclose(first, teacher[0].numpy()[picked][:, order])
    # both sources share the colour scale of a stage
    assert images[0].get_images()[0].get_clim() == images[2].get_images()[0].get_clim()


def test_attention_heatmaps_rejects_unmatched_channels():
    with pytest.raises(ValueError, match="connectors"):
        viz.attention_heatmaps({"teacher": _attention(), "student": _attention(channels=(2, 3))})


def test_attention_profile_draws_one_line_per_source_in_teacher_order():
    teacher, student = _attention(), _attention(seed=2)
    ax = viz.attention_profile({"teacher": teacher, "student": student}, stage=2, sample=3)
    lines = ax.get_lines()
    assert len(lines) == 2
    assert np.all(np.diff(lines[0].get_ydata()) <= 0)  # the teacher's curve falls
    order = np.argsort(-teacher[1][3].numpy(), kind="stable")
    np.testing.assert_allclose(lines[1].get_ydata(), student[1][3].numpy()[order])


def test_similarity_chart_has_two_panels_and_a_bar_per_stage_and_condition():
    rows = [{"stage": s, "cd": 0.1 * s, "cosine": 0.9, "condition": c} for c in ("a", "b", "c") for s in (1, 2, 3, 4)]
    fig = viz.similarity_chart(rows)
    assert len(fig.axes) == 2
    assert all(len([p for p in ax.patches if p.get_height() > 0]) == 12 for ax in fig.axes)
    assert fig.axes[0].get_yscale() == "log"


def test_schedule_plot_draws_a_line_per_schedule_and_term():
    scheds = {"paper": schedules.get("paper-cifar100", epochs=20), "cos": schedules.get("cosine", epochs=20)}
    fig = viz.schedule_plot(scheds, epochs=20)
    assert len(fig.axes) == 3
    for ax, term in zip(fig.axes, ("ce", "cd", "gkd")):
        assert len(ax.get_lines()) == 2
        x, y = ax.get_lines()[0].get_data()
        assert x[0] == 1 and x[-1] < 21
        assert y[0] == scheds["paper"](1.0)[term] and y[-1] == scheds["paper"](float(x[-1]))[term]
    # per-schedule lengths
    fig = viz.schedule_plot(scheds, epochs={"paper": 20, "cos": 10})
    assert fig.axes[1].get_lines()[1].get_xdata().max() < 11


def test_learning_curves_one_panel_per_metric_one_line_per_run():
    frame = pd.DataFrame({"run": ["a"] * 3 + ["b"] * 3, "epoch": [1, 2, 3] * 2,
                          "test_top1": [10, 50, 90, 20, 40, 80], "test_loss": [2.0, 1.0, 0.5, 2.5, 1.5, 0.7]})
    fig = viz.learning_curves(frame, y=["test_top1", "test_loss"], logy=["test_loss"], ylims={"test_top1": (0, 100)})
    assert len(fig.axes) == 2
    assert len([ln for ln in fig.axes[0].get_lines() if len(ln.get_xdata()) == 3]) == 2
    assert fig.axes[1].get_yscale() == "log" and fig.axes[0].get_ylim() == (0, 100)
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]


def test_ablation_chart_dots_labels_and_teacher_line():
    table = pd.DataFrame({"top-1 %": [99.0, 97.0, 98.0]}, index=["teacher", "student alone", "KD"])
    ax = viz.ablation_chart(table, teacher=99.0, error=0.5)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["student alone", "KD"]
    texts = [t.get_text() for t in ax.texts]
    assert "97.00" in texts and "98.00" in texts and any("teacher" in t for t in texts)
    assert any(np.allclose(ln.get_xdata(), 99.0) for ln in ax.get_lines())  # the dashed teacher line
    assert ax.get_xlim()[1] <= 100.5


def test_probability_histogram_normalises_each_group():
    ax = viz.probability_histogram({"many": np.full(1000, 0.95), "few": np.array([0.1, 0.3])}, bins=10)
    heights = sorted(p.get_height() for p in ax.patches if p.get_height() > 0)
    assert heights[-1] == pytest.approx(100.0)  # all of "many" in one bin
    assert heights[0] == pytest.approx(50.0)  # each of the two "few" in its own bin


def test_glue_is_safe_without_a_notebook():
    viz.glue("x", np.float64(1.5))  # outside a kernel myst-nb's glue only displays; it must not raise
    viz.glue("y", torch.tensor(3))


def test_explorers_redraw_their_image_when_a_control_changes():
    pytest.importorskip("ipywidgets")
    w = viz.attention_explorer({"teacher": _attention(), "student": _attention(seed=1)}, torch.arange(12) % 3)
    controls, image = w.children
    assert image.value[:8] == b"\x89PNG\r\n\x1a\n"
    before = image.value
    controls.children[0].value = 1  # stage 1
    assert image.value[:4] == b"\x89PNG" and image.value != before
    s = viz.schedule_explorer(["constant", "cosine"], epochs=30)
    controls, image = s.children
    before = image.value
    controls.children[1].value = 100  # epochs
    assert image.value != before
    controls.children[0].value = ()  # nothing chosen: a message, not an error
    assert image.value[:4] == b"\x89PNG"
    assert plt.get_fignums() == []  # every drawn figure was closed


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_seed_comparison_legend_clears_the_axis_label_and_the_data():
    per_seed = pd.DataFrame({"method": ["student"] * 3 + ["cd"] * 3, "seed": [0, 1, 2] * 2,
                             "top1": [70.0, 71.0, 72.0, 73.0, 74.0, 75.0]})
    summary = pd.DataFrame({"method": ["student", "cd"], "top1_mean": [71.0, 74.0],
                            "top1_ci_low": [69.0, 72.0], "top1_ci_high": [73.0, 76.0]})
    ax = viz.seed_comparison(per_seed, summary, baseline="student")
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "one seed", "mean, 95 % t-interval", "mean of student"]
    assert not _overlaps(legend, ax.xaxis.label.get_window_extent(renderer))
    assert not _overlaps(legend, ax.get_window_extent(renderer))  # above the panel, not on the dots
    assert legend.y1 <= fig.bbox.y1 + 1  # and inside the figure


def test_term_curves_raw_and_weighted_rows_with_gaps_for_zero_weights():
    frame = pd.DataFrame({"run": ["a"] * 3, "epoch": [1, 2, 3],
                          "loss_ce": [0.0, 2.0, 1.0], "w_ce": [0.0, 1.0, 1.0],
                          "loss_cd": [6.0, 3.0, 1.2], "w_cd": [6.0, 6.0, 6.0]})
    frame["raw_ce"] = (frame["loss_ce"] / frame["w_ce"]).where(frame["w_ce"] != 0)
    frame["raw_cd"] = frame["loss_cd"] / frame["w_cd"]
    fig = viz.term_curves(frame, terms=("ce", "cd"))
    raw, weighted = fig.axes[0], fig.axes[1]
    assert raw.get_yscale() == "log" and weighted.get_yscale() == "log"
    assert np.allclose(raw.get_lines()[1].get_ydata(), [1.0, 0.5, 0.2])  # cd, unweighted
    assert np.isnan(raw.get_lines()[0].get_ydata()[0])  # ce not computed in epoch 1
    assert np.isnan(weighted.get_lines()[0].get_ydata()[0])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["CE (the labels)", "CD"]


def test_probability_histogram_legend_sits_beside_the_bars():
    ax = viz.probability_histogram({"a": np.full(50, 0.05), "b": np.full(5, 0.1)}, bins=10)
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["a", "b"]
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
