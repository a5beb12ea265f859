"""What every section builder shares: the run's files loaded once (:class:`RunData`) and HTML helpers."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtrain.components.metrics.sense import lower_is_better as smaller_is_better_by_name
from mmtrain.app.report import sources

# Runs written before metrics.json named its task's primary metric: the first of these present.
PRIMARY = ("acc", "r@1_mean", "choice_acc", "spearman", "macro_f1")


@dataclass
class RunData:
    """One training run directory's files, read once."""

    folder: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, float]] = field(default_factory=list)
    series: dict[str, sources.Series] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)
    audit_rows: list[dict[str, Any]] = field(default_factory=list)
    skipped_counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    skipped_first: list[dict[str, Any]] = field(default_factory=list)
    config: str | None = None

    @classmethod
    def load(cls, folder: str | Path) -> RunData:
        folder = Path(folder)
        metrics = sources.read_json(folder / "metrics.json")
        audit, audit_rows = sources.grad_audit(folder)
        counts, first = sources.skipped_records(folder)
        return cls(folder=folder, metrics=metrics if isinstance(metrics, dict) else {},
                   steps=sources.train_steps(folder), series=sources.scalar_series(folder), audit=audit,
                   audit_rows=audit_rows, skipped_counts=counts, skipped_first=first,
                   config=sources.config_text(folder))

    def split(self, name: str) -> dict[str, Any]:
        result = self.metrics.get(name)
        return result if isinstance(result, dict) else {}

    @property
    def main_split(self) -> str | None:
        """``test`` when the run has test results, else ``val``, else ``None``."""
        return next((s for s in ("test", "val") if self.split(s)), None)

    @property
    def declared_primary(self) -> dict[str, Any]:
        """The task's own headline metric (``metrics.json``'s ``primary_metric``: name, higher_is_better)."""
        declared = self.metrics.get("primary_metric")
        return declared if isinstance(declared, dict) else {}

    def primary_key(self) -> str | None:
        """The headline metric: the one the task declares, else (older runs) accuracy, mean Recall@1...,
        else the checkpoint monitor, else the first."""
        result = scalars(self.split(self.main_split)) if self.main_split else {}
        if self.declared_primary.get("name") in result:
            return str(self.declared_primary["name"])
        for key in PRIMARY:
            if key in result:
                return key
        monitor = str(sources.config_value(self.config, "callbacks.checkpoint.monitor") or "")
        if monitor.split("/", 1)[-1] in result:
            return monitor.split("/", 1)[-1]
        return next(iter(result), None)

    def num_classes(self) -> int | None:
        for split in ("test", "val"):
            result = self.split(split)
            if isinstance(result.get("per_class_acc"), Mapping) and result["per_class_acc"]:
                return len(result["per_class_acc"])
            if isinstance(result.get("confusion"), list) and result["confusion"]:
                return len(result["confusion"])
        return None

    def chance(self, key: str | None) -> float | None:
        """Chance level of a metric: 1/classes for accuracy, the run's own chance keys for retrieval."""
        if key is None:
            return None
        if key == "acc":
            classes = self.num_classes()
            return 1.0 / classes if classes else None
        for split in ("test", "val"):
            result = self.split(split)
            for candidate in (f"chance_{key.removesuffix('_mean')}", f"chance_{key}", f"{key}_chance"):
                if isinstance(result.get(candidate), (int, float)):
                    return float(result[candidate])
        return None

    def epoch_boundaries(self) -> list[float]:
        """x positions (optimizer steps, 0-based as TensorBoard logs them) between epochs."""
        marks = []
        for before, after in zip(self.steps, self.steps[1:]):
            if after["epoch"] != before["epoch"]:
                marks.append((before["global_step"] + after["global_step"]) / 2 - 1)
        return marks


def lower_is_better(key: str, run: RunData | None = None) -> bool:
    """Whether smaller values of metric ``key`` are better: as the run's task declares it for its primary
    metric, else by the metric's name."""
    declared = run.declared_primary if run is not None else {}
    if declared.get("name") == key and "higher_is_better" in declared:
        return not declared["higher_is_better"]
    return smaller_is_better_by_name(key)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def scalars(result: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def table(header: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><tr>{head}</tr>{body}</table>"


def section(anchor: str, title: str, body: str) -> str:
    """A titled section with an anchor the page's navigation links to."""
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'
