"""Kill a training run with SIGKILL at random points, resume it, and count bit-identical endings.

    .venv/bin/python scripts/kill_resume_trials.py --trials 20 [--workers 2] [--seed 0] [-- overrides...]

One uninterrupted reference run, then per trial: the same command with a
:class:`~mmtrain.engine.callbacks.faults.KillSwitch` at a random global step and hook (before or after a train
batch, during validation, at epoch end), then the same command with ``resume=<run dir>``. Each
resumed run is compared with the reference (final weights, optimizer, scheduler, early-stopping
state, per-step losses, exported weights; ``torch.equal``). Prints one line per trial and the count.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from mmtrain.engine.callbacks.faults import HOOKS, compare_runs, kill_overrides

# The demo data at its tiny size (real mp4 decoding, augmentation, modality dropout, fusion dropout):
# 16 train samples in batches of 2 = 8 steps per epoch, 3 epochs, a resume point every 3 steps.
BASE = ["experiment=demo", "data.prepare.size=tiny", "data.batch_size=2", "trainer.max_epochs=3",
        "callbacks.progress=null", "callbacks.resume_checkpoint.every_n_train_steps=3", "evaluate_unimodal=false",
        "callbacks.early_stopping.patience=10"]


def mmtrain(overrides: list[str], log: Path) -> int:
    """Run ``mmtrain train`` in a fresh process; its output goes to ``log``. Returns the exit code."""
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "mmtrain.app.cli", "train", *overrides], stdout=out, stderr=out,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return done.returncode


def epoch_ends(run_dir: Path) -> list[int]:
    """The global step at the end of each epoch, from the run's ``train_steps.csv``."""
    ends: dict[int, int] = {}
    with open(run_dir / "train_steps.csv") as handle:
        for row in csv.DictReader(handle):
            ends[int(row["epoch"])] = int(row["global_step"])
    return [ends[e] for e in sorted(ends)]


def pick(rng: random.Random, ends: list[int]) -> tuple[str, int]:
    """A random kill point that the run reaches: (hook, global step)."""
    hook = rng.choice(HOOKS)
    if hook in ("validation_batch", "train_epoch_end"):
        return hook, rng.choice(ends)
    last = ends[-1]
    return hook, rng.randrange(0, last) if hook == "train_batch_start" else rng.randrange(1, last + 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers of every run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--out", type=Path, default=Path("outputs/kill_resume_trials"))
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run")
    args = parser.parse_args()
    out = args.out / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True)
    base = [*BASE, f"data.num_workers={args.workers}", *args.overrides]
    started = time.perf_counter()
    if mmtrain([*base, f"run_dir={out / 'reference'}"], out / "reference.log") != 0:
        print(f"the reference run failed: see {out / 'reference.log'}")
        return 1
    ends = epoch_ends(out / "reference")
    print(f"reference: {ends[-1]} steps, epochs end at steps {ends} ({time.perf_counter() - started:.0f} s)")
    rng, identical = random.Random(args.seed), 0
    for trial in range(args.trials):
        hook, step = pick(rng, ends)
        run_dir = out / f"trial{trial:02d}"
        killed = mmtrain([*base, *kill_overrides(step, hook), f"run_dir={run_dir}"], out / f"trial{trial:02d}_killed.log")
        resumed = mmtrain([*base, f"resume={run_dir}"], out / f"trial{trial:02d}_resumed.log")
        diffs = compare_runs(out / "reference", run_dir) if resumed == 0 else [f"resume exited {resumed}"]
        identical += not diffs
        verdict = "bit-identical" if not diffs else "DIFFERS: " + ", ".join(diffs[:4])
        print(f"trial {trial:2d}: SIGKILL at {hook} of step {step:3d} (exit {killed}) -> {verdict}", flush=True)
    print(f"{identical} of {args.trials} resumed runs ended bit-identical to the uninterrupted run "
          f"(workers={args.workers}, {time.perf_counter() - started:.0f} s; runs in {out})")
    return 0 if identical == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
