"""The report's plots keep every line readable: equal curves stay distinguishable, legends sit beside the
axes (never over a line or a bar), and the figures' parts do not overlap once drawn."""

from __future__ import annotations

from matplotlib.figure import Figure

from mmtrain.app.report.plots import metric_figure, per_class_figure


def drawn_boxes(figure: Figure) -> tuple[object, object]:
    figure.canvas.draw()
    axis = figure.axes[0]
    renderer = figure.canvas.get_renderer()
    return axis.get_window_extent(renderer), axis.get_legend().get_window_extent(renderer)


def test_equal_curves_stay_distinguishable_and_the_legend_is_beside_them() -> None:
    points = [(75.0 * (i + 1), 0.5 + 0.03 * i) for i in range(10)]
    series = {"val/acc": points, "train/acc": points, "val/macro_f1": points, "train/macro_f1": points}
    figure = metric_figure(series, chance=0.1, boundaries=[75.0 * i for i in range(1, 10)])
    lines = [line for line in figure.axes[0].get_lines() if line.get_label() in series]
    assert len({(line.get_marker(), line.get_markersize()) for line in lines}) == 4  # each one its own look
    axes, legend = drawn_boxes(figure)
    assert legend.x0 >= axes.x1 and not axes.overlaps(legend)
    assert legend.x1 <= figure.bbox.x1 + 1  # and inside the picture


def test_the_per_class_legend_never_covers_the_bars_of_the_last_classes() -> None:
    names = [f"class {i}" for i in range(10)]
    figure = per_class_figure(names, {"recall (acc)": [0.95] * 10, "precision": [1.0] * 10, "f1": [0.97] * 10},
                              chance=0.1, split="test")
    axes, legend = drawn_boxes(figure)
    assert legend.x0 >= axes.x1 and not axes.overlaps(legend)
