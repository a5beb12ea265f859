"""``report.html``: one self-contained page per run directory, from the files the run wrote.

Reads ``metrics.json`` (a training run), ``stages.json`` (a pipeline) or ``kfold.json`` (k-fold
cross-validation), plus ``config.yaml``, and writes ``report.html`` beside them: scalar metrics per
split, per-class accuracy, the confusion matrix, retrieval and Bradley-Terry figures, one row per
stage or fold, skipped samples, timings and the resolved config. No external files, scripts or
network; any browser opens it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REPORT_NAME = "report.html"
SUMMARIES = ("metrics.json", "stages.json", "kfold.json")

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}.muted{color:#777}
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _scalars(result: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _shade(count: int, top: int) -> str:
    alpha = 0.0 if top == 0 else 0.85 * count / top
    return f'<td style="background:rgba(40,110,200,{alpha:.2f})">{count}</td>'


def _confusion(matrix: list[list[int]], names: list[str]) -> str:
    top = max((max(row) for row in matrix if row), default=0)
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th>" + "".join(_shade(int(c), top) for c in row) + "</tr>"
        for name, row in zip(names, matrix)
    )
    return f"<table>{head}{rows}</table>"


def _run_sections(metrics: Mapping[str, Any]) -> list[str]:
    """Sections for one training run's ``metrics.json``."""
    parts: list[str] = []
    splits = {s: metrics[s] for s in ("val", "test") if isinstance(metrics.get(s), Mapping)}
    columns = {s: _scalars(r) for s, r in splits.items()}
    for modality, result in (metrics.get("test_only_one_modality") or {}).items():
        columns[f"test ({modality} only)"] = _scalars(result)
    keys = list(dict.fromkeys(k for values in columns.values() for k in values))
    if keys:
        parts.append("<h2>Metrics</h2>" + _table(
            ["metric", *columns], ([k, *(v.get(k, "-") for v in columns.values())] for k in keys)))
    for split, result in splits.items():
        per_class = result.get("per_class_acc")
        if isinstance(per_class, Mapping):
            parts.append(f"<h2>Per-class accuracy ({split})</h2>" + _table(["class", "acc"], per_class.items()))
        if isinstance(result.get("confusion"), list) and isinstance(per_class, Mapping):
            parts.append(f"<h2>Confusion matrix ({split})</h2>" + _confusion(result["confusion"], list(per_class)))
    skipped = metrics.get("skipped") or {}
    if skipped:
        parts.append("<h2>Skipped samples</h2>" + _table(
            ["split", "skipped", "seen"], ([s, v.get("skipped", 0), v.get("seen", "-")] for s, v in skipped.items())))
    timing = {k: metrics[k] for k in ("epochs", "global_steps", "fit_seconds", "best_checkpoint") if k in metrics}
    if timing:
        parts.append("<h2>Run</h2>" + _table(["", "value"], timing.items()))
    return parts


def _summary_sections(summary: Mapping[str, Any], kind: str) -> list[str]:
    """One row per stage (``stages.json``) or fold (``kfold.json``), test metrics as columns."""
    runs = summary.get("stages") if kind == "stages" else summary.get("folds")
    if isinstance(runs, list):
        runs = {str(i): r for i, r in enumerate(runs)}
    runs = runs or {}
    scalars = {name: _scalars((r or {}).get("test") or (r or {})) for name, r in runs.items()}
    keys = list(dict.fromkeys(k for v in scalars.values() for k in v))
    parts = [f"<h2>{'Stages' if kind == 'stages' else 'Folds'} (test split)</h2>"
             + _table([kind[:-1], *keys], ([n, *(v.get(k, "-") for k in keys)] for n, v in scalars.items()))]
    stats = summary.get("summary")  # k-fold: {metric: {mean, std, n}}
    if isinstance(stats, Mapping) and stats:
        parts.append("<h3>mean ± std over folds</h3>" + _table(
            ["metric", "mean", "std", "folds"],
            ([m, s.get("mean", "-"), s.get("std", "-"), s.get("n", "-")] for m, s in stats.items()
             if isinstance(s, Mapping) and s.get("mean") is not None)))
    if summary.get("failed"):
        parts.append(f"<p>failed folds: {html.escape(str(summary['failed']))} (see fold_&lt;i&gt;/error.txt)</p>")
    return parts


def write_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report.html`` from the run's summary files; returns its path.

    Raises:
        FileNotFoundError: ``run_dir`` has none of ``metrics.json``, ``stages.json``, ``kfold.json``.
    """
    folder = Path(run_dir)
    found = [name for name in SUMMARIES if (folder / name).is_file()]
    if not found:
        raise FileNotFoundError(f"{folder} has no {' / '.join(SUMMARIES)}; is it a finished mmtrain run?")
    sections: list[str] = []
    for name in found:
        data = json.loads((folder / name).read_text())
        if name == "metrics.json":
            sections += _run_sections(data)
        else:
            sections += _summary_sections(data, name.split(".")[0])
    config = folder / "config.yaml"
    if config.is_file():
        sections.append("<h2>Config</h2><pre>" + html.escape(config.read_text()) + "</pre>")
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mmtrain run {html.escape(folder.name)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>mmtrain run</h1>"
        f"<p class='muted'>{html.escape(str(folder.resolve()))}</p>{''.join(sections)}</body></html>"
    )
    target = folder / REPORT_NAME
    target.write_text(page, encoding="utf-8")
    return target
