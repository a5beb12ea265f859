"""A transient rich progress bar per split, for commands that walk data splits (pack, check, demo build)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

#: ``progress(split, done, total)``; ``total`` is ``None`` for a stream of unknown length.
SplitProgress = Callable[[str, int, "int | None"], None]


@contextlib.contextmanager
def split_bars(console: Any, label: Callable[[str], str]) -> Iterator[SplitProgress]:
    """A callback drawing one bar per split on ``console``, described by ``label(split)``; gone when done."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(split: str, done: int, total: int | None) -> None:
            if split not in tasks:
                tasks[split] = bar.add_task(label(split), total=total)
            bar.update(tasks[split], completed=done)

        yield progress
