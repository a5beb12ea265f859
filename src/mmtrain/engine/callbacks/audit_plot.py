"""``grad_audit.csv`` in and out, its per-module summary, and ``grad_flow.png`` (matplotlib Agg)."""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: Columns of ``grad_audit.csv``, one row per audited step per module group.
CSV_COLUMNS = (
    "step", "epoch", "module", "grad_norm", "param_norm", "update_ratio", "nonfinite",
    "dead_fraction", "saturated_fraction", "amp_scale", "rss_mb", "cuda_max_mb",
)
_INT_COLUMNS = {"step", "epoch", "nonfinite"}


def format_cell(value: Any) -> str:
    """``None`` -> blank; floats with 6 significant digits (``nan``/``inf`` kept as such)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an audit CSV with numbers parsed (blank -> ``None``); ``[]`` if the file is absent."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key in CSV_COLUMNS:
                text = (raw.get(key) or "").strip()
                if key == "module":
                    row[key] = text
                elif not text:
                    row[key] = None
                else:
                    row[key] = int(float(text)) if key in _INT_COLUMNS else float(text)
            rows.append(row)
    return rows


def write_rows(path: Path, rows: Iterable[dict[str, Any]], *, append: bool) -> None:
    """Write (``append=False``: header first, replacing the file) or append rows of the audit CSV."""
    mode = "a" if append else "w"
    with path.open(mode, newline="") as handle:
        writer = csv.writer(handle)
        if not append:
            writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([format_cell(row.get(key)) for key in CSV_COLUMNS])


def finite_positive(values: Iterable[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v) and v > 0]


def summarize_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-module figures of the audit CSV for ``grad_audit.json``.

    Returns ``steps_audited``, ``modules`` (name -> ``grad_norm_mean``/``grad_norm_max`` over finite
    norms, ``nonfinite_steps``, ``frozen``), ``nonfinite_grad_modules``, ``no_gradient_modules``
    (trainable but a zero norm at every audited step), ``last_amp_scale``, ``max_rss_mb``, ``cuda_max_mb``.
    """
    modules: dict[str, Any] = {}
    for name in dict.fromkeys(row["module"] for row in rows):
        mine = [row for row in rows if row["module"] == name]
        norms = [r["grad_norm"] for r in mine if r["grad_norm"] is not None]
        finite = [v for v in norms if math.isfinite(v)]
        modules[name] = {
            "frozen": not norms,
            "grad_norm_mean": sum(finite) / len(finite) if finite else None,
            "grad_norm_max": max(finite) if finite else None,
            "nonfinite_steps": sum(1 for r in mine if (r["nonfinite"] or 0) > 0),
        }
    scales = [r["amp_scale"] for r in rows if r["amp_scale"] is not None]
    cuda = [r["cuda_max_mb"] for r in rows if r["cuda_max_mb"] is not None]
    return {
        "steps_audited": len({row["step"] for row in rows}),
        "modules": modules,
        "nonfinite_grad_modules": [m for m, s in modules.items() if s["nonfinite_steps"]],
        "no_gradient_modules": [m for m, s in modules.items() if not s["frozen"] and s["grad_norm_max"] == 0.0],
        "last_amp_scale": scales[-1] if scales else None,
        "max_rss_mb": max((r["rss_mb"] for r in rows if r["rss_mb"] is not None), default=None),
        "cuda_max_mb": max(cuda) if cuda else None,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far in MiB (``ru_maxrss``); 0 where unavailable."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def plot_grad_flow(rows: Sequence[dict[str, Any]], path: Path, *, title: str = "") -> None:
    """Draw ``grad_flow.png``: mean and max gradient L2 norm per module (left, log bars) and each
    module's norm over the audited steps (right, log lines). Frozen modules (no norm) are labelled.

    Args:
        rows: rows as :func:`read_rows` returns them.
        path: PNG to write (replaced).
        title: figure title (e.g. the run directory's name).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    modules = list(dict.fromkeys(row["module"] for row in rows))  # model order, first seen
    norms = {m: finite_positive(r["grad_norm"] for r in rows if r["module"] == m) for m in modules}
    height = max(3.0, 0.32 * len(modules) + 1.5)
    fig = Figure(figsize=(13, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    bars, lines = fig.subplots(1, 2, width_ratios=[1, 1.3])
    if not modules or not any(norms.values()):
        for axis in (bars, lines):
            axis.text(0.5, 0.5, "no finite gradient norm recorded", ha="center", va="center")
            axis.set_axis_off()
    else:
        ys = list(range(len(modules)))
        means = [sum(v) / len(v) if v else float("nan") for v in norms.values()]
        maxes = [max(v) if v else float("nan") for v in norms.values()]
        bars.barh(ys, means, color="tab:blue", alpha=0.7, label="mean")
        bars.scatter(maxes, ys, color="tab:red", marker="|", s=200, label="max", zorder=3)
        frozen = {m for m in modules if all(r["grad_norm"] is None for r in rows if r["module"] == m)}
        labels = [m if norms[m] else f"{m} ({'frozen' if m in frozen else 'no finite grad'})" for m in modules]
        bars.set_yticks(ys, labels, fontsize=8)
        bars.invert_yaxis()
        bars.set_xscale("log")
        every = [v for vs in norms.values() for v in vs]
        bars.set_xlim(left=min(every) / 3)  # log bars start at the axis edge: leave the smallest some length
        _readable_log_ticks(bars.xaxis, [min(every) / 3, *every])
        bars.set_xlabel("gradient L2 norm (pre-clip)")
        bars.set_title("per module over audited steps")
        bars.legend(loc="best", fontsize=8)
        bars.grid(axis="x", which="both", alpha=0.3)
        for module in modules:
            points = [(r["step"], r["grad_norm"]) for r in rows if r["module"] == module
                      and r["grad_norm"] is not None and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0]
            if points:
                lines.plot(*zip(*points), marker=".", linewidth=1, label=module)
        lines.set_yscale("log")
        _readable_log_ticks(lines.yaxis, every)
        lines.set_xlabel("optimizer step")
        lines.set_ylabel("gradient L2 norm")
        lines.set_title("per module over steps")
        lines.grid(which="both", alpha=0.3)
        lines.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"gradient flow {title}".strip())
    fig.savefig(path, format="png")


def _readable_log_ticks(axis: Any, values: Sequence[float]) -> None:
    """Plain-number ticks at 1-2-5 steps within 2 decades (else one per decade); no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    span = math.log10(max(values) / min(values)) if values else 0.0
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if span <= 2 else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())
