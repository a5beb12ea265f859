"""The demo build's progress: a bar per split where someone watches, one log line per split elsewhere."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

#: ``(split, clips done, clips in the split)`` after each clip.
ClipProgress = Callable[[str, int, int], None]


@contextlib.contextmanager
def clip_progress(console: object | None = None) -> Iterator[ClipProgress]:
    """A progress callback for :func:`~mmtrain.data.demo.build.build_demo`: rich bars (transient) on a
    terminal (``console``, default: a stderr console), else one log line as each split completes."""
    from rich.console import Console
    from mmtrain.core.progress import split_bars

    console = console or Console(stderr=True)
    if not getattr(console, "is_terminal", False):
        def logged(split: str, done: int, total: int) -> None:
            if done == total:
                log.info("demo set: %s split built (%d clips)", split, total)

        yield logged
        return
    with split_bars(console, lambda split: f"{split} clips") as shown:
        yield shown
