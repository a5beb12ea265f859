"""Data-wait benchmark: the fraction of training-step time spent waiting for the next batch.

Trains the built-in demo (``experiment=demo``: ``spoken_digits``, the ``small`` set: 1200 train clips
of video + audio + text, batch 16; one torch thread in the main process, as the experiment sets)
with ``train(compose_config([...]))`` for one epoch (``trainer.limit_train_batches`` steps, no
validation), once with the data config's default ``data.num_workers`` (2) and once with
``data.num_workers=0`` (context, no goal). Both runs use the same config otherwise: the demo's
model, task and callbacks (minus the progress bar; test limited to one batch, no unimodal tests).

Per step, two probes:

* wait: the duration of Lightning's ``next(data_fetcher)`` in the training loop (the
  ``[_TrainingEpochLoop].train_dataloader_next`` action, recorded by a profiler that keeps only that
  action), i.e. the time the loop blocks until the DataLoader hands over the next batch;
* step: the time between consecutive ``on_train_batch_start`` hooks (a callback), i.e. one whole
  iteration: forward, backward, optimizer, callbacks, logging and the fetch of the next batch.

fraction = sum(wait) / sum(step) over the steady-state steps (the first ``SKIP`` steps, which
include worker start-up and the DataLoader's initial prefetch queue, and the last step are left
out). Each configuration is run 3 times (``--quick``: 2 runs of 40 steps instead of the epoch's 75),
alternating, and the table shows medians over the runs. A third row compares the whole step time
of the two configurations. The fraction depends on the machine's load: other processes slow the
model step (torch's intra-op threads suffer most) more than the workers' decoding.

Data: the ``small`` demo set under ``$TMPDIR/mmtrain-bench-data/spoken_digits`` (``--data-root``),
built there once by ``ensure_demo`` (about 30 s) and reused; not the repository's ``data/``, which
other jobs may rebuild at another size. Runs happen in a temporary directory.

Run: ``.venv/bin/python benchmarks/data_wait.py [--quick]``. Exit code 1 when the goal is missed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import Profiler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py, when run as a script
from harness import DATA_ROOT, Result, console, goal_row, print_table, train_probed  # noqa: E402

from mmtrain.config.compose import compose_config  # noqa: E402
from mmtrain.data.demo import ensure_demo  # noqa: E402

GOAL = 0.05
SKIP = 10  # steps left out at the start: worker start-up, then the DataLoader's prefetched batches
FETCH = "[_TrainingEpochLoop].train_dataloader_next"


class FetchProfiler(Profiler):
    """Records the duration of every training-loop ``next(data_fetcher)``; prints no report."""

    def __init__(self) -> None:
        super().__init__()
        self.durations: list[float] = []
        self._started: float | None = None

    def start(self, action_name: str) -> None:
        if action_name == FETCH:
            self._started = time.perf_counter()

    def stop(self, action_name: str) -> None:
        if action_name == FETCH and self._started is not None:
            self.durations.append(time.perf_counter() - self._started)
            self._started = None

    def summary(self) -> str:
        return ""


class StepClock(pl.Callback):
    """``time.perf_counter`` at every ``on_train_batch_start``, and the main process's torch
    intra-op thread count there (context: with workers on every core, more than one thread makes the
    model step wait for descheduled threads)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.threads: set[int] = set()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.starts.append(time.perf_counter())
        self.threads.add(torch.get_num_threads())




def default_workers() -> int:
    """``data.num_workers`` of the demo config, as shipped."""
    return int(compose_config(["experiment=demo"]).data.num_workers)


def measure(steps: int, extra: list[str], work: Path, data_root: Path) -> dict[str, Any]:
    """One training run of ``steps`` steps; per-step waits and step times, steady state only.

    The fetch of batch ``i`` (``i >= 1``) happens between the starts of steps ``i - 1`` and ``i``, so
    the cycles ``start[i + 1] - start[i]`` for ``i`` in ``SKIP .. n-2`` hold the fetches
    ``fetch[SKIP+1 .. n-1]``. The last step has no next fetch (and ends with the epoch-end
    checkpoint), so it is left out too.
    """
    profiler, clock = FetchProfiler(), StepClock()
    overrides = [
        "experiment=demo", f"data_root={data_root}", "trainer.max_epochs=1", f"+trainer.limit_train_batches={steps}",
        "+trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "+trainer.limit_test_batches=1",
        "evaluate_unimodal=false", "callbacks.progress=null", "+trainer.enable_progress_bar=false",
        "callbacks.early_stopping=null", "logger.tensorboard=null", "+trainer.enable_model_summary=false",
        f"run_dir={work}",
    ]
    train_probed([*overrides, *extra], [clock], profiler)
    starts = clock.starts
    if len(starts) != steps or len(profiler.durations) < steps:
        raise RuntimeError(f"expected {steps} steps, saw {len(starts)} starts and {len(profiler.durations)} fetches")
    waits = profiler.durations[SKIP + 1 : steps]
    cycles = [b - a for a, b in zip(starts[SKIP:-1], starts[SKIP + 1 :])]
    return {"wait": sum(waits), "step": sum(cycles), "steps": len(cycles),
            "median_wait": statistics.median(waits), "median_step": statistics.median(cycles),
            "first_wait": profiler.durations[0], "threads": sorted(clock.threads)}


def run(quick: bool = False, data_root: Path = DATA_ROOT, repeats: int | None = None) -> list[Result]:
    """The data-wait fraction with the default workers (goal) and with none (context): each run
    ``repeats`` times, alternating, medians over the runs."""
    steps = 40 if quick else 75  # 75 = one whole epoch of the small demo set at batch 16
    repeats = repeats or (2 if quick else 3)
    workers = default_workers()
    started = time.perf_counter()
    ensure_demo(data_root / "spoken_digits", size="small")
    console.print(f"demo set ready in {time.perf_counter() - started:.1f} s ({data_root / 'spoken_digits'})")
    work = Path(tempfile.mkdtemp(prefix="mmtrain-bench-datawait-"))
    configs = {f"default data.num_workers={workers}": [], "data.num_workers=0": ["data.num_workers=0"]}
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in configs}
    cwd = os.getcwd()
    os.chdir(work)  # outputs/ and anything relative lands in the temp dir
    try:
        for repeat in range(repeats):
            for index, (label, extra) in enumerate(configs.items()):
                started = time.perf_counter()
                m = measure(steps, extra, work / f"run{repeat}-{index}", data_root)
                runs[label].append(m)
                console.print(f"{label}, run {repeat + 1}/{repeats}: {m['wait'] / m['steps'] * 1e3:.1f} ms wait / "
                              f"{m['step'] / m['steps'] * 1e3:.1f} ms step = {m['wait'] / m['step']:.3f} "
                              f"(main torch threads {m['threads']}; {time.perf_counter() - started:.0f} s)")
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    step_ms = {}
    for goal, (label, ms) in zip((True, False), runs.items()):
        fraction = statistics.median(m["wait"] / m["step"] for m in ms)
        wait = statistics.median(m["wait"] / m["steps"] for m in ms) * 1e3
        step_ms[label] = statistics.median(m["step"] / m["steps"] for m in ms) * 1e3
        name = f"data: wait for next batch / step time, demo train, {label}"
        value, baseline = f"{wait:.1f} ms wait", f"{step_ms[label]:.1f} ms step"
        rows.append(goal_row(name, value, baseline, fraction, GOAL, at_most=True) if goal
                    else Result(name, value, baseline, fraction))
    (with_workers, inline) = step_ms.values()
    rows.append(Result(f"data: step time (wait included), {next(iter(configs))} vs data.num_workers=0",
                       f"{with_workers:.1f} ms", f"{inline:.1f} ms", with_workers / inline))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 steps instead of a whole epoch (75)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per configuration (median); 2 quick, 3 else")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="where the demo set is (built if missing)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    results = run(quick=args.quick, data_root=args.data_root.resolve(), repeats=args.repeats)
    title = (f"data wait (spoken_digits small, batch 16, {'40' if args.quick else '75'} steps a run, first {SKIP} "
             f"skipped; medians over runs)")
    return 0 if print_table(title, results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
