"""The result tables the ``mmtrain`` command prints (rich): a run's metrics, a sweep's comparison."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def scalars(result: dict) -> dict[str, float]:
    """The plain numbers of a result dict (no bools, lists or nested dicts)."""
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def metrics_table(metrics: dict) -> Table:
    """The scalar metrics of val and test (and of each one-modality test) as one table."""
    columns = {split: scalars(metrics[split]) for split in ("val", "test") if isinstance(metrics.get(split), dict)}
    if metrics.get("val_sources") and "val" in columns:  # named val sources: "val" is their mean
        named = {f"val ({name})": scalars(result) for name, result in metrics["val_sources"].items()}
        columns = {**named, "val (mean of sources)": columns.pop("val"), **columns}
    for modality, result in metrics.get("test_only_one_modality", {}).items():
        columns[f"test ({modality} only)"] = scalars(result)
    table = Table(title="metrics")
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = list(dict.fromkeys(k for values in columns.values() for k in values))
    for key in keys:
        table.add_row(key, *(f"{values[key]:.4f}" if key in values else "-" for values in columns.values()))
    return table


def sweep_table(summary: dict[str, Any]) -> Table:
    """One row per run of a sweep, one column per test metric (``failed`` where a run failed)."""
    columns = {name: scalars(run.get("test") or {}) for name, run in summary["runs"].items()}
    keys = list(dict.fromkeys(k for values in columns.values() for k in values))
    table = Table(title=f"sweep: test metrics of {len(columns)} runs")
    table.add_column("run")
    for key in keys:
        table.add_column(key, justify="right")
    for name, values in columns.items():
        failed = summary["runs"][name].get("error")
        table.add_row(name, *(("failed" if failed else "-") if k not in values else f"{values[k]:.4f}" for k in keys))
    return table
