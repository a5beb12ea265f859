"""The rows of a batch prediction: targets, error rows, the output file (JSONL or CSV) and the progress bar."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)


def batch_targets(batch: dict[str, Any], model: Any) -> list[Any]:
    """Per sample, what the data says the answer is (``None`` where it says nothing): a class label's name
    (``labels`` long [B]), a regressor's ``{target name: value}`` (``labels`` float [B, K]) or a
    reference answer (``target_texts``)."""
    count = len(batch["ids"])
    labels = batch.get("labels")
    texts = batch.get("target_texts")
    writes = hasattr(model, "generate_answers") and getattr(model, "head", None) is None and not getattr(
        model.config, "answer_token_ids", None)  # a model that answers in words: its reference is the text
    if writes and texts is not None and len(texts) == count:
        return list(texts)
    if labels is not None and not labels.is_floating_point():
        names = model.config.id2label
        return [names.get(int(label), str(int(label))) for label in labels.tolist()]
    if labels is not None:
        target_names = list(getattr(model.config, "target_names", None) or [])
        return [dict(zip(target_names, row)) if target_names else row for row in labels.tolist()]
    if texts is not None and len(texts) == count:
        return list(texts)
    return [None] * count


def error_rows(skipped: list[dict[str, str]]) -> list[dict[str, Any]]:
    """A row per sample left out because its media could not be decoded (the collate's records)."""
    return [{"id": record["id"], "error": f"{record['modality']} {record['file']}: {record['error']}"}
            for record in skipped]


def flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``probabilities.seven``); lists as JSON text (a CSV cell)."""
    flat: dict[str, Any] = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else value
    return flat


class RowWriter:
    """Rows streamed to ``<out>.partial.jsonl`` (each flushed), turned into ``out`` on a clean exit:
    renamed for ``.jsonl``, written as CSV (the union of every row's dotted columns, in first-seen order,
    ``error`` last) for ``.csv``. On an error the partial file stays, and the log says where and how many rows it holds."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.partial = out.with_name(out.name + ".partial.jsonl")
        self.rows = 0
        self.errors = 0
        self._handle: Any = None

    def __enter__(self) -> RowWriter:
        self._handle = self.partial.open("w", encoding="utf-8")
        return self

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.rows += 1
            self.errors += "error" in row
        self._handle.flush()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._handle.close()
        if kind is not None:
            log.error("prediction stopped after %d row(s); they are in %s", self.rows, self.partial)
            return
        if self.out.suffix.lower() == ".csv":
            self._write_csv()
            self.partial.unlink()
        else:
            os.replace(self.partial, self.out)

    def _write_csv(self) -> None:
        columns: dict[str, None] = {}
        with self.partial.open(encoding="utf-8") as source:
            for line in source:
                columns.update(dict.fromkeys(flatten(json.loads(line))))
        temporary = self.out.with_name(self.out.name + ".tmp")
        with self.partial.open(encoding="utf-8") as source, temporary.open("w", newline="", encoding="utf-8") as sink:
            writer = csv.DictWriter(sink, fieldnames=[c for c in columns if c != "error"] + ["error"] * ("error" in columns))
            writer.writeheader()
            for line in source:
                writer.writerow(flatten(json.loads(line)))
        os.replace(temporary, self.out)


@contextlib.contextmanager
def progress_bar(total: int | None, description: str) -> Iterator[Callable[[int], None]]:
    """``advance(samples)``: a rich bar on a terminal (stderr), else a log line at every tenth of ``total``
    (every 1,000 samples when the total is unknown)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    done = 0
    if not console.is_terminal:
        step = max(1, total // 10) if total else 1000

        def logged(count: int) -> None:
            nonlocal done
            before, done = done, done + count
            if done // step > before // step or (total is not None and done >= total > before):
                log.info("%s: %d%s samples", description, done, f"/{total}" if total else "")

        yield logged
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda count: bar.advance(task, count)
