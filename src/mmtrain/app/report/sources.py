"""Readers for the files a run directory holds; each returns an empty value when its file is absent.

``train_steps.csv`` (loss per optimizer step), the TensorBoard event files under ``tensorboard/``
(per-epoch val/train metrics), ``grad_audit.json`` / ``grad_audit.csv`` (gradient audit),
``skipped.jsonl`` (undecodable samples) and the JSON summaries. Unreadable files count as absent:
a report of a half-written or older run still renders what is there.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Series = list[tuple[int, float]]


def read_json(path: Path) -> Any:
    """The parsed file, or ``None`` when it is missing or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def train_steps(folder: Path) -> list[dict[str, float]]:
    """Rows of ``train_steps.csv`` (``epoch, batch, global_step, loss``) as numbers; bad rows dropped."""
    path = folder / "train_steps.csv"
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            values = {k: _float(row.get(k)) for k in ("epoch", "batch", "global_step", "loss")}
            if all(v is not None for v in values.values()):
                rows.append(values)  # type: ignore[arg-type]
    return rows


def event_files(folder: Path) -> list[Path]:
    """TensorBoard event files of the run (``tensorboard/`` and below), oldest first."""
    root = folder / "tensorboard"
    if not root.is_dir():
        return []
    return sorted(root.rglob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name))


def scalar_series(folder: Path) -> dict[str, Series]:
    """``{tag: [(step, value), ...]}`` from the run's TensorBoard events.

    A run writes one event file for training and one more per later ``validate``/``test`` call
    (re-scoring the best weights, the one-modality tests). Per tag the longest series is kept (the
    earliest file on ties), so the curves are the per-epoch values of training, not the re-scores.
    """
    files = event_files(folder)
    if not files:
        return {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # tensorboard is a dependency; an odd environment still gets a report
        log.warning("tensorboard is not importable: the report has no metric curves")
        return {}
    best: dict[str, Series] = {}
    for path in files:
        try:
            events = EventAccumulator(str(path), size_guidance={"scalars": 0})
            events.Reload()
            tags = events.Tags().get("scalars", [])
            for tag in tags:
                series = [(int(e.step), float(e.value)) for e in events.Scalars(tag)]
                if len(series) > len(best.get(tag, [])):
                    best[tag] = series
        except Exception as err:  # a truncated event file (run killed mid-write)
            log.warning("skipping unreadable event file %s: %s", path, err)
    return best


def epoch_at(series: Mapping[str, Series], step: int) -> int | None:
    """The (0-based) epoch a logged ``step`` belongs to, from the ``epoch`` tag; ``None`` without it."""
    found = None
    for at, value in series.get("epoch", []):
        if at <= step:
            found = int(value)
    return found


def grad_audit(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``grad_audit.json`` (summary) and the ``grad_audit.csv`` rows; empty when absent."""
    summary = read_json(folder / "grad_audit.json")
    rows: list[dict[str, Any]] = []
    path = folder / "grad_audit.csv"
    if path.is_file():
        with path.open(newline="") as handle:
            rows = [dict(r) for r in csv.DictReader(handle)]
    return (summary if isinstance(summary, dict) else {}), rows


def skipped_records(folder: Path, keep: int = 20) -> tuple[Counter[tuple[str, str, str]], list[dict[str, Any]]]:
    """Counts of ``skipped.jsonl`` entries by (split, modality, error type) and the first ``keep`` entries."""
    path = folder / "skipped.jsonl"
    counts: Counter[tuple[str, str, str]] = Counter()
    first: list[dict[str, Any]] = []
    if not path.is_file():
        return counts, first
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        error = str(entry.get("error", "")).split(":", 1)[0] or "?"
        counts[(str(entry.get("split", "?")), str(entry.get("modality", "?")), error)] += 1
        if len(first) < keep:
            first.append(entry)
    return counts, first


def config_text(folder: Path) -> str | None:
    path = folder / "config.yaml"
    return path.read_text(errors="replace") if path.is_file() else None


def config_value(text: str | None, dotted: str) -> Any:
    """One value of ``config.yaml`` by dotted key (``callbacks.checkpoint.monitor``); ``None`` if absent."""
    if not text:
        return None
    try:
        import yaml

        node: Any = yaml.safe_load(text)
    except Exception:
        return None
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
