"""The report's figures: matplotlib (Agg, no display, no global backend change) to PNG data URIs.

Each function takes plain numbers and returns an ``<img>`` tag whose ``src`` is a base64
``data:image/png`` URI, so the page needs no other file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Series = Sequence[tuple[float, float]]
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
#: One marker per line, hollow and filled in turn: lines with equal values (val acc and macro-F1 on a
#: balanced set) stay visible on top of each other.
_MARKERS = ["o", "s", "^", "D", "v", "x", "P", "*"]


def image_tag(png: bytes, alt: str, mime: str = "image/png") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:{mime};base64,{data}">'


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return image_tag(buffer.getvalue(), alt)


def _epoch_lines(axis, boundaries: Sequence[float]) -> None:
    for x in boundaries:
        axis.axvline(x, color="#bbb", lw=0.7, ls=":", zorder=0)


def _moving_average(values: Sequence[float], width: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= width:
            total -= values[i - width]
        out.append(total / min(i + 1, width))
    return out


def loss_curves(train_steps: Series, epoch_series: Mapping[str, Series], boundaries: Sequence[float]) -> str:
    """Train loss per step (and its moving average) with per-epoch losses (``val/loss``...) over it."""
    figure = _figure(7.5, 3.4)
    axis = figure.add_subplot()
    if train_steps:
        xs, ys = zip(*train_steps)
        axis.plot(xs, ys, color="#9ab", lw=0.8, label="train loss (step)")
        if len(ys) >= 8:
            width = max(2, len(ys) // 20)
            axis.plot(xs, _moving_average(ys, width), color="#246", lw=1.6, label=f"train loss (mean of {width})")
    for i, (name, series) in enumerate(epoch_series.items()):
        if series:
            xs, ys = zip(*series)
            axis.plot(xs, ys, marker="o", ms=4, lw=1.6, color=_COLORS[(i + 1) % len(_COLORS)], label=name)
    _epoch_lines(axis, boundaries)
    axis.set_xlabel("optimizer step (dotted: epoch ends)")
    axis.set_ylabel("loss")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title("loss")
    return _png(figure, "loss curves")


def metric_curves(series: Mapping[str, Series], chance: float | None, boundaries: Sequence[float],
                  title: str = "metrics per epoch") -> str:
    """One line per metric (val solid, train dashed) over optimizer steps, chance as a grey line."""
    return _png(metric_figure(series, chance, boundaries, title), title)


def metric_figure(series: Mapping[str, Series], chance: float | None, boundaries: Sequence[float],
                  title: str = "metrics per epoch") -> Figure:
    """The figure of :func:`metric_curves` (legend beside the axes, never over a line)."""
    figure = _figure(7.5, 3.4)
    axis = figure.add_subplot()
    for i, (name, points) in enumerate(series.items()):
        xs, ys = zip(*points)
        style = "--" if name.startswith("train/") else "-"
        marker = _MARKERS[i % len(_MARKERS)]
        hollow = {"markerfacecolor": "none", "markeredgewidth": 1.4} if i % 2 == 0 else {}
        # each later line is drawn smaller and thinner, so an equal earlier one still shows around it
        axis.plot(xs, ys, style, marker=marker, ms=max(3, 10 - 1.5 * i), lw=max(0.8, 2.2 - 0.3 * i),
                  color=_COLORS[i % len(_COLORS)], label=name, **hollow)
    if chance is not None:
        axis.axhline(chance, color="#888", ls="-.", lw=1.2, label=f"chance ({chance:.3g})")
    _epoch_lines(axis, boundaries)
    axis.set_xlabel("optimizer step (dotted: epoch ends)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines, never over them
    axis.set_title(title)
    return figure


def learning_rate(series: Mapping[str, Series], boundaries: Sequence[float]) -> str:
    """The learning rate of each optimizer group over optimizer steps (``lr-<Optimizer>[/pg<i>]`` tags)."""
    figure = _figure(7.5, 2.6)
    axis = figure.add_subplot()
    for i, (name, points) in enumerate(series.items()):
        xs, ys = zip(*points)
        axis.plot(xs, ys, lw=1.5, color=_COLORS[i % len(_COLORS)], label=name)
    _epoch_lines(axis, boundaries)
    axis.set_xlabel("optimizer step (dotted: epoch ends)")
    axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.set_title("learning rate")
    return _png(figure, "learning rate")


def confusion(matrix: Sequence[Sequence[int]], names: Sequence[str], split: str) -> str:
    """Row-normalised heatmap (colour: fraction of the true class) annotated with the counts."""
    size = len(names)
    rows = [[int(c) for c in row] for row in matrix]
    shares = [[c / max(sum(row), 1) for c in row] for row in rows]
    side = min(7.5, 2.4 + 0.36 * size)
    figure = _figure(side + 0.8, side)
    axis = figure.add_subplot()
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i, row in enumerate(rows):
        for j, count in enumerate(row):
            if count:
                axis.text(j, i, str(count), ha="center", va="center", fontsize=8,
                          color="white" if shares[i][j] > 0.55 else "black")
    axis.set_xticks(range(size), names, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(range(size), names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"confusion matrix ({split}; colour = share of the true class)")
    figure.colorbar(image, ax=axis, shrink=0.8)
    return _png(figure, f"confusion matrix {split}")


def per_class(names: Sequence[str], metrics: Mapping[str, Sequence[float]], chance: float | None, split: str) -> str:
    """Grouped horizontal bars per class (recall = per-class accuracy, precision, F1)."""
    return _png(per_class_figure(names, metrics, chance, split), f"per-class metrics {split}")


def per_class_figure(names: Sequence[str], metrics: Mapping[str, Sequence[float]], chance: float | None,
                     split: str) -> Figure:
    """The figure of :func:`per_class` (legend beside the bars, never over them)."""
    size = len(names)
    figure = _figure(6.0, min(9.0, 1.4 + 0.3 * size * (1.0 if len(metrics) > 1 else 0.6)))
    axis = figure.add_subplot()
    height = 0.8 / max(1, len(metrics))
    for i, (label, values) in enumerate(metrics.items()):
        axis.barh([y + i * height for y in range(size)], values, height=height, label=label,
                  color=_COLORS[i % len(_COLORS)])
    if chance is not None:
        axis.axvline(chance, color="#888", ls="-.", lw=1.2, label=f"chance ({chance:.3g})")
    axis.set_yticks([y + 0.4 - height / 2 for y in range(size)], names, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(0, 1.0)
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    axis.set_title(f"per-class metrics ({split})")
    return figure


def recall_at_k(directions: Mapping[str, Mapping[int, float]], chance: Mapping[str, Mapping[int, float]],
                split: str) -> str:
    """Recall@K bars per retrieval direction, chance as a black tick on each bar."""
    ks = sorted({k for values in directions.values() for k in values})
    figure = _figure(7.5, 3.2)
    axis = figure.add_subplot()
    width = 0.8 / max(1, len(directions))
    for i, (name, values) in enumerate(directions.items()):
        xs = [j + i * width for j in range(len(ks))]
        axis.bar(xs, [values.get(k, 0.0) for k in ks], width=width, label=name, color=_COLORS[i % len(_COLORS)])
        ticks = [(x, chance.get(name, {}).get(k)) for x, k in zip(xs, ks)]
        ticks = [(x, c) for x, c in ticks if c is not None]
        if ticks:
            axis.scatter(*zip(*ticks), marker="_", s=300, color="black", zorder=3,
                         label="chance" if i == 0 else None)
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(ks))], [f"R@{k}" for k in ks])
    axis.set_ylim(0, 1.05)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="upper left")
    axis.set_title(f"Recall@K ({split})")
    return _png(figure, f"recall at k {split}")
