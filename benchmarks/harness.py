"""What every benchmark shares: a result row, paired timing, and the table they are printed in.

A benchmark module exposes ``run(quick: bool) -> list[Result]`` (``benchmarks/run_all.py`` calls
each) and a ``main()`` for running it alone. Every ratio is measured against a baseline timed in the
same run, never against a stored number.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(width=150)  # the table stays readable when the output is a file or a pipe

#: Where benchmarks keep the ``small`` demo set (built once by ``ensure_demo``), apart from the
#: repository's ``data/``, which other jobs may rebuild at another size.
DATA_ROOT = Path(tempfile.gettempdir()) / "mmtrain-bench-data"


def with_malloc_tunables() -> None:
    """Re-execute this benchmark script once with ``perf.malloc``'s ``GLIBC_TUNABLES`` (as the ``mmtrain``
    command runs), so every contender of a benchmark gets the same allocator settings."""
    import sys

    from mmtrain.app.perf import reexec_with_malloc_tunables

    reexec_with_malloc_tunables(sys.argv, program=[sys.executable])


def train_probed(overrides: Sequence[str], callbacks: Sequence[Any] = (), profiler: Any = None) -> dict[str, Any]:
    """``mmtrain.app.commands.train.train`` on ``compose_config(overrides)`` with extra ``callbacks`` (and a
    Lightning ``profiler``) added to the trainer it builds; its metrics."""
    import mmtrain.app.commands.train as run_module
    from mmtrain.config.compose import compose_config

    build = run_module.build_trainer

    def with_probes(*args: Any, **kwargs: Any) -> Any:
        trainer = build(*args, **kwargs)
        trainer.callbacks.extend(callbacks)
        if profiler is not None:
            trainer.profiler = profiler
        return trainer

    run_module.build_trainer = with_probes
    try:
        return run_module.train(compose_config(list(overrides)))
    finally:
        run_module.build_trainer = build


@dataclass(frozen=True)
class Result:
    """One measurement against its baseline.

    Attributes:
        name: what was measured, against what.
        value, baseline: the two measurements, already formatted with their units.
        ratio: value / baseline as the goal reads it (``None`` when not a ratio).
        goal: e.g. ``"<= 1.05"``; ``""`` when the row only reports.
        met: whether ``ratio`` meets ``goal`` (``None`` when there is no goal).
    """

    name: str
    value: str
    baseline: str
    ratio: float | None
    goal: str = ""
    met: bool | None = None


def goal_row(name: str, value: str, baseline: str, ratio: float, bound: float, *, at_most: bool) -> Result:
    """A :class:`Result` whose ``ratio`` must be ``<= bound`` (``at_most``) or ``>= bound``."""
    met = ratio <= bound if at_most else ratio >= bound
    return Result(name, value, baseline, ratio, f"{'<=' if at_most else '>='} {bound:g}", met)


def paired_medians(first: Callable[[], object], second: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall times of two actions run alternately (after a warm-up of each), so that load from
    other processes hits both alike."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for action, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            action()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def print_table(title: str, results: Sequence[Result]) -> bool:
    """Print ``results`` as one table; True when every goal is met."""
    table = Table(title=title)
    for column in ("measurement", "value", "baseline", "ratio", "goal", "met"):
        table.add_column(column, justify="left" if column in ("measurement", "goal") else "right")
    for r in results:
        met = "" if r.met is None else ("[green]yes[/]" if r.met else "[red]no[/]")
        table.add_row(escape(r.name), escape(r.value), escape(r.baseline), "" if r.ratio is None else f"{r.ratio:.2f}", r.goal, met)
    console.print(table)
    return all(r.met is not False for r in results)


def run_child(code: str, *args: str, timeout: int = 1800) -> dict[str, Any]:
    """Run ``python -c code args`` in a fresh process (its own peak-RSS mark, nothing carried over) and
    return the JSON object its last output line holds."""
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"the measured process ({' '.join(args)}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def standalone(title: str, run: Callable[[bool], Sequence[Result]], quick_help: str) -> int:
    """``main()`` of a benchmark script run alone: ``--quick``, one table, exit code 1 when a goal is missed."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=(sys.modules["__main__"].__doc__ or title).splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return 0 if print_table(title, run(parser.parse_args().quick)) else 1
