"""``report.html``: one self-contained page per run directory, from the files the run wrote.

Reads ``metrics.json`` (a training run), ``stages.json`` (a pipeline) or ``kfold.json`` (k-fold
cross-validation), plus ``config.yaml``, and writes ``report.html`` beside them. A training run's
page opens with a verdict (headline metric on test and best val against chance, the run's size, any
warnings), then its curves (loss per step, per-epoch metrics from the TensorBoard events), then the
details: every metric per split, per-class metrics and the confusion matrix, Recall@K and retrieval
examples, gradient flow, skipped samples, timings, the resolved config. A pipeline or k-fold run gets
one row per stage or fold. Figures are PNG data URIs: no external files, scripts or network; any
browser opens it. Sections whose files a run lacks are left out, so older runs still render.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mmtrain.core.fileio import atomic_write_bytes
from mmtrain.app.report import details, overview
from mmtrain.app.report.common import RunData, scalars, section, table

log = logging.getLogger(__name__)
REPORT_NAME = "report.html"
SUMMARIES = ("metrics.json", "stages.json", "kfold.json", "sweep.json")
#: Written when a run stops before it finishes (an error, Ctrl-C, SIGTERM): why, and where.
STOPPED_NAME = "stopped.json"
#: Section title and row name of each summary file.
SUMMARY_KINDS = {"stages": ("Stages", "stage"), "kfold": ("Folds", "fold"), "sweep": ("Sweep", "run")}

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}.muted{color:#777}
img.plot{display:block;max-width:100%;height:auto;margin:.6em 0}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:0 1.2em;align-items:start}
nav{font-size:13px;margin:.4em 0 1em}nav a{margin-right:1em;color:#246}
.verdict{background:#f6f8fb;border:1px solid #dde3ea;border-radius:6px;padding:.4em 1em;font-size:15px}
.verdict p{margin:.35em 0}.warn{color:#9a4a00;margin:.3em 0}.ok{color:#2a7a2a}
.badge{border-radius:4px;padding:1px 8px;font-size:13px;color:#fff}
.badge.good{background:#2a8a3a}.badge.weak{background:#c98a00}.badge.bad{background:#c0392b}
"""
# Sections of a training run's report, in page order (the story first, the details after).
RUN_SECTIONS = (overview.curves, overview.metrics_table, overview.classes, details.retrieval, details.gradients,
                details.skipped, details.timings, details.others)


def _run_sections(folder: Path) -> tuple[str, list[str]]:
    """The verdict and the sections for one training run (its ``metrics.json`` and the files beside it)."""
    run = RunData.load(folder)
    return _safe(overview.verdict, run), [part for build in RUN_SECTIONS if (part := _safe(build, run))]


def _safe(build: Callable[[RunData], str], run: RunData) -> str:
    """One section; a file the builder cannot make sense of costs that section, never the report."""
    try:
        return build(run)
    except Exception as err:  # the report is written at the end of every run: it must not fail it
        log.warning("report.html: section %s failed: %r", build.__name__, err)
        return f"<p class='warn'>section {html.escape(build.__name__)} could not be built: {html.escape(repr(err))}</p>"


def _summary_sections(summary: Mapping[str, Any], kind: str) -> list[str]:
    """One row per stage (``stages.json``) or fold (``kfold.json``), test metrics as columns."""
    runs = {"stages": summary.get("stages"), "kfold": summary.get("folds"), "sweep": summary.get("runs")}[kind]
    if isinstance(runs, list):
        runs = {str(i): r for i, r in enumerate(runs)}
    runs = runs or {}
    values = {name: scalars((r or {}).get("test") or (r or {})) for name, r in runs.items()}
    keys = list(dict.fromkeys(k for v in values.values() for k in v))
    parts = ["<p class='muted'>test-split metrics, one row each</p>"
             + table([SUMMARY_KINDS[kind][1], *keys], ([n, *(v.get(k, "-") for k in keys)] for n, v in values.items()))]
    stats = summary.get("summary")  # k-fold: {metric: {mean, std, n}}
    if isinstance(stats, Mapping) and stats:
        parts.append("<h3>mean ± std over folds</h3>" + table(
            ["metric", "mean", "std", "folds"],
            ([m, s.get("mean", "-"), s.get("std", "-"), s.get("n", "-")] for m, s in stats.items()
             if isinstance(s, Mapping) and s.get("mean") is not None)))
    if summary.get("failed"):
        what = "runs" if kind == "sweep" else "folds (see fold_&lt;i&gt;/error.txt)"
        parts.append(f"<p>failed {what}: {html.escape(str(summary['failed']))}</p>")
    return parts


def _nav(sections: list[str]) -> str:
    links = re.findall(r'<section id="([^"]+)"><h2>([^<]*)</h2>', "".join(sections))
    return "<nav>" + "".join(f'<a href="#{a}">{t.split(" (")[0]}</a>' for a, t in links) + "</nav>"


def record_stop(run_dir: str | Path, error: BaseException, *, global_step: int, epoch: int) -> None:
    """Write ``stopped.json`` (why the run stopped, at which step) and a report of what the run left;
    never raises (the run's own error is what the user must see)."""
    from mmtrain.core.fileio import atomic_write_bytes

    from mmtrain.engine.callbacks.signals import TrainingTerminated

    if isinstance(error, TrainingTerminated):
        reason = "interrupted (Ctrl-C)" if error.ctrl_c else "terminated (SIGTERM)"
    else:
        reason = f"{type(error).__name__}: {error}"
    stop = {"reason": reason, "global_step": int(global_step),
            "epoch": int(epoch), "resume": f"mmtrain train ... resume={Path(run_dir)}"}
    try:
        atomic_write_bytes(Path(run_dir) / STOPPED_NAME, json.dumps(stop, indent=2).encode("utf-8"))
        write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - a report must never hide the run's own error
        log.warning("could not write the report of the stopped run %s: %r", run_dir, err)


def _stopped_header(folder: Path) -> str:
    try:
        stop = json.loads((folder / STOPPED_NAME).read_text())
    except (OSError, ValueError):
        return ""
    return (f"<div class='verdict'><p class='warn'><b>The run stopped before it finished</b>: "
            f"{html.escape(str(stop.get('reason')))} (epoch {stop.get('epoch')}, optimizer step "
            f"{stop.get('global_step')}). What it wrote until then is below; continue it with "
            f"<code>{html.escape(str(stop.get('resume')))}</code>.</p></div>")


def render(run_dir: str | Path) -> str:
    """The report page of ``run_dir`` as HTML text (a run that stopped early: what it left, and why).

    Raises:
        FileNotFoundError: ``run_dir`` has none of ``metrics.json``, ``stages.json``, ``kfold.json``,
            ``sweep.json``, ``stopped.json``.
    """
    folder = Path(run_dir)
    found = [name for name in SUMMARIES if (folder / name).is_file()]
    stopped = _stopped_header(folder) if (folder / STOPPED_NAME).is_file() else ""
    if not found and stopped:
        found = ["metrics.json"]  # no metrics yet: the curves, audit and skips the run wrote
    if not found:
        raise FileNotFoundError(f"{folder} has no {' / '.join(SUMMARIES)}; is it a finished mmtrain run?")
    header, sections = "", []
    for name in found:
        if name == "metrics.json":
            header, parts = _run_sections(folder)
            sections += parts
        else:
            data = json.loads((folder / name).read_text())
            kind = name.split(".")[0]
            sections.append(section(kind, SUMMARY_KINDS[kind][0], "".join(_summary_sections(data, kind))))
    config = details.config(RunData(folder=folder, config=(folder / "config.yaml").read_text(errors="replace")
                                    if (folder / "config.yaml").is_file() else None))
    if config:
        sections.append(config)
    title = html.escape(folder.resolve().name)
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>mmtrain run {title}</title>"
        f"<style>{_STYLE}</style></head><body><h1>mmtrain run {title}</h1>"
        f"<p class='muted'>{html.escape(str(folder.resolve()))}</p>{stopped}{header}{_nav(sections)}"
        f"{''.join(sections)}</body></html>"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write ``<run_dir>/report.html`` (see :func:`render`); returns its path."""
    target = Path(run_dir) / REPORT_NAME
    page = render(run_dir)
    atomic_write_bytes(target, page.encode("utf-8"))
    return target
