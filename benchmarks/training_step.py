"""Training-step benchmark: mmtrain's overhead and the FLOP/s a step achieves.

Same model (the demo's video + audio + text classifier, from its config), same pre-collated batches
(the tiny demo set at the demo's batch size, 16, cycled; ``--batch`` for another), same optimizer,
schedule and gradient clipping, four ways:

1. a hand-written PyTorch loop (forward, backward, clip, AdamW step, scheduler step): the baseline;
2. mmtrain: the Lightning ``Trainer`` that ``mmtrain train`` builds, with the default callbacks
   (exact-resume seeding, per-step loss log, gradient audit, NaN/Inf guard, resume checkpoints, ...)
   and no progress bar or logger (terminal and disk I/O are not the step), twice: as the Python API
   runs it (Lightning as released: no patch of any third-party library) and with the opt-in
   ``perf.lightning_fixes`` the ``mmtrain`` command applies (``mmtrain.engine.lightning_fixes``);
3. plain Lightning: a minimal ``LightningModule`` (the model's loss, logged per step and epoch, same
   optimizer, schedule and clipping), no callbacks, Lightning as released: how much of mmtrain's gap
   is Lightning's own. Goal: mmtrain without any patch within 1.03x of it;
4. the transformers ``Trainer`` on the same model and batches.

Seconds per step are the median over the steps after a warm-up. Each of ``--repeats`` repeats runs
all four (in a rotated order); a ratio is the median over repeats of that repeat's ratio to the
loop, and the times shown are medians over repeats. Goal: mmtrain within 1.05x of the loop. All of
it twice: with the torch thread count the demo trains with (``callbacks.threads``: 1) and with
torch's default (the number of cores), every contender alike. glibc malloc is tuned as the ``mmtrain``
command tunes its own process (``perf.malloc``: the script re-executes itself once with
``GLIBC_TUNABLES``), for every contender alike.

Compute: the FLOPs of one step (``torch.utils.flop_counter``, forward + backward) over the loop's
step time, against a float32 matmul peak measured in the same run.

Run: ``.venv/bin/python benchmarks/training_step.py [--steps 60] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import open_dict
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py, when run as a script
from harness import Result, goal_row, print_table, with_malloc_tunables  # noqa: E402

from mmtrain.config.compose import compose_config  # noqa: E402
from mmtrain.data.datamodule import CpuBatchDataModule  # noqa: E402
from mmtrain.models.processing import model_inputs  # noqa: E402
from mmtrain.engine.build import build_data, build_model, build_task, wire_processor  # noqa: E402
from mmtrain.engine.lightning_fixes import lightning_fixes_applied  # noqa: E402
from mmtrain.app.commands.train import build_trainer, prepare  # noqa: E402

OVERHEAD_GOAL = 1.05
PLAIN_GOAL = 1.03  # mmtrain without any patch of a third-party library vs plain Lightning
WARMUP = 10
CONFIG = ["experiment=demo", "data.prepare.size=tiny", "data.num_workers=0",
          "callbacks.progress=null", "~logger", "evaluate_unimodal=false", "callbacks.early_stopping=null",
          "callbacks.export=null", "+trainer.enable_progress_bar=false", "~callbacks.threads"]
# export and early stopping act after the steps timed here; no progress bar (terminal output is not the step);
# the thread count is set for all four contenders alike by compare(), not by the demo's callback


class Batches(Dataset):
    """``steps`` items cycling over pre-collated batches (see :func:`batch_loader`)."""

    def __init__(self, batches: list[dict[str, Any]], steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.batches[index % len(self.batches)]


def batch_loader(batches: list[dict[str, Any]], steps: int) -> DataLoader[Any]:
    """The batches as they are, one per step: no batching, and no ``default_convert`` walk through each
    batch looking for NumPy arrays (the loop takes its batches straight from a list)."""
    return DataLoader(Batches(batches, steps), batch_size=None, collate_fn=as_is)


def as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


class PreCollated(CpuBatchDataModule):
    """The batches in a datamodule, as ``mmtrain train`` hands batches to Lightning (through
    ``MultimodalDataModule``, whose CPU batches are not walked to be moved to the CPU)."""

    def __init__(self, batches: list[dict[str, Any]], steps: int) -> None:
        super().__init__()
        self.batches, self.steps = batches, steps

    def train_dataloader(self) -> DataLoader[Any]:
        return batch_loader(self.batches, self.steps)


def setup(workdir: Path, batch: int | None = None) -> tuple[Any, Any, list[dict[str, Any]], tuple[str, ...]]:
    """The config, the task (model inside) and two collated train batches of the tiny demo, of
    ``batch`` samples (default: the demo's ``data.batch_size``)."""
    os.chdir(workdir)
    # its own copy of the tiny demo set: never rebuild the user's data/spoken_digits at another size
    data_root = Path(tempfile.gettempdir()) / "mmtrain-bench-data-tiny"
    cfg, prefixes = prepare(compose_config([*CONFIG, f"data_root={data_root}"]))
    pl.seed_everything(0, verbose=False)
    datamodule = build_data(cfg, prefixes)
    model = build_model(cfg, datamodule.label_names, prefixes, facts=datamodule.processor.model_facts())
    wire_processor(datamodule.processor, model)
    task = build_task(cfg, prefixes, model, datamodule.label_names, datamodule.processor)
    train = datamodule.splits["train"]
    size = int(batch or cfg.data.batch_size)
    batches = [datamodule.processor.collate([train[i % len(train)] for i in range(s, s + size)])
               for s in (0, size)]
    return cfg, task, batches, prefixes


def steady(times: list[float]) -> float:
    return statistics.median(times[WARMUP:])


def raw_loop(task: Any, batches: list[dict[str, Any]], steps: int) -> float:
    """Seconds per step of the hand-written loop."""
    model = copy.deepcopy(task.model).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = task.optimizer_factory(params)
    scheduler = task.scheduler_factory(optimizer, total_steps=steps) if task.scheduler_factory else None
    times = []
    for batch in itertools.islice(itertools.cycle(batches), steps):
        start = time.perf_counter()
        loss = model(**model_inputs(batch)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        times.append(time.perf_counter() - start)
    return steady(times)


class StepClock(pl.Callback):
    """Wall time from one train batch start to the next (the whole step, hooks and data fetch included)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.starts.append(time.perf_counter())


def mmtrain_fit(cfg: Any, task: Any, batches: list[dict[str, Any]], steps: int, prefixes: tuple[str, ...],
                run_dir: Path) -> float:
    """Seconds per step of ``trainer.fit`` as ``mmtrain train`` builds the trainer."""
    fresh = copy.deepcopy(task)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
        cfg.trainer.max_steps, cfg.trainer.limit_val_batches, cfg.trainer.num_sanity_val_steps = steps, 0, 0
        cfg.trainer.enable_model_summary = False
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("benchmark\n")
    trainer = build_trainer(cfg, prefixes, run_dir, monitored=task.monitored())
    clock = StepClock()
    trainer.callbacks.insert(0, clock)
    trainer.fit(fresh, datamodule=PreCollated(batches, steps))
    return steady([b - a for a, b in zip(clock.starts, clock.starts[1:])])


class PlainLightning(pl.LightningModule):
    """The model in a minimal LightningModule, as a Lightning user would write it: the model's loss,
    logged per step and epoch, the task's optimizer and per-step schedule."""

    def __init__(self, model: torch.nn.Module, task: Any, steps: int) -> None:
        super().__init__()
        self.model, self.factories, self.steps = model, (task.optimizer_factory, task.scheduler_factory), steps

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.model(**model_inputs(batch)).loss
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["ids"]))
        return loss

    def configure_optimizers(self) -> Any:
        optimizer_factory, scheduler_factory = self.factories
        optimizer = optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if scheduler_factory is None:
            return optimizer
        scheduler = scheduler_factory(optimizer, total_steps=self.steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lightning_fit(task: Any, batches: list[dict[str, Any]], steps: int) -> float:
    """Seconds per step of plain Lightning (no mmtrain callbacks or task), same clipping."""
    clock = StepClock()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, gradient_clip_val=1.0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[clock])
    trainer.fit(PlainLightning(copy.deepcopy(task.model).train(), task, steps),
                train_dataloaders=batch_loader(batches, steps))
    return steady([b - a for a, b in zip(clock.starts, clock.starts[1:])])


def hf_trainer(task: Any, batches: list[dict[str, Any]], steps: int, out: Path) -> float:
    """Seconds per step of ``transformers.Trainer`` on the same model and batches."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Clock(TrainerCallback):
        """Step starts, as StepClock does for Lightning: the whole step between two starts."""

        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.starts.append(time.perf_counter())

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.starts.append(time.perf_counter())

    model = copy.deepcopy(task.model).train()
    clock = Clock()
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=1, max_steps=steps,
                             learning_rate=float(task.optimizer_factory.keywords.get("lr", 1e-3)),
                             weight_decay=float(task.optimizer_factory.keywords.get("weight_decay", 0.0)),
                             lr_scheduler_type="cosine", warmup_steps=max(1, steps // 10), max_grad_norm=1.0, logging_steps=10**6,
                             save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                             disable_tqdm=True, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=Batches([model_inputs(b) for b in batches], steps),
                      data_collator=lambda items: items[0], callbacks=[clock])
    trainer.model_accepts_loss_kwargs = False  # the model's own loss: no num_items_in_batch argument
    trainer.train()
    return steady([b - a for a, b in zip(clock.starts, clock.starts[1:])])


def step_flops(task: Any, batch: dict[str, Any]) -> int:
    """FLOPs of one forward + backward pass on ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(task.model).train()
    with FlopCounterMode(display=False) as counter:
        model(**model_inputs(batch)).loss.backward()
    return int(counter.get_total_flops())


def matmul_peak(size: int = 1024, repeats: int = 7) -> float:
    """float32 matmul FLOP/s on this machine now (median of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def perf_fit(cfg: Any, task: Any, batches: list[dict[str, Any]], steps: int, prefixes: tuple[str, ...],
             run_dir: Path) -> float:
    """:func:`mmtrain_fit` with ``perf.lightning_fixes`` applied (as the ``mmtrain`` command runs)."""
    with lightning_fixes_applied():
        return mmtrain_fit(cfg, task, batches, steps, prefixes, run_dir)


def compare(cfg: Any, task: Any, batches: list[dict[str, Any]], prefixes: tuple[str, ...], steps: int,
            repeats: int, work: Path, threads: int) -> dict[str, tuple[float, float, float]]:
    """Per contender ``(median seconds per step, median per-repeat ratio to the loop, the same to plain
    Lightning)`` with ``threads`` torch threads for all. Each repeat runs all, in a rotated order."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        contenders = {
            "loop": lambda r: raw_loop(task, batches, steps),
            "ours": lambda r: mmtrain_fit(cfg, task, batches, steps, prefixes, work / f"run{threads}-{r}"),
            "ours_perf": lambda r: perf_fit(cfg, task, batches, steps, prefixes, work / f"perf{threads}-{r}"),
            "plain": lambda r: lightning_fit(task, batches, steps),
            "theirs": lambda r: hf_trainer(task, batches, steps, work / f"hf{threads}-{r}"),
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        order = list(contenders)
        for r in range(repeats):
            for name in order[r % len(order):] + order[: r % len(order)]:
                times[name].append(contenders[name](r))
    finally:
        torch.set_num_threads(previous)
    # ratios per repeat (the contenders of one repeat ran within seconds of each other), then the median
    return {name: (statistics.median(t), statistics.median(a / b for a, b in zip(t, times["loop"])),
                   statistics.median(a / b for a, b in zip(t, times["plain"])))
            for name, t in times.items()}


def demo_threads(cfg: Any) -> int:
    """The torch thread count the demo trains with (``callbacks.threads``), else torch's default."""
    node = (cfg.get("callbacks") or {}).get("threads")
    return int(node.num_threads) if node else torch.get_num_threads()


def run(quick: bool = False, steps: int | None = None, repeats: int | None = None,
        batch: int | None = None) -> list[Result]:
    """Rows ``step: ...`` (overhead: with the demo's thread count, the goal, and with torch's default
    count) and ``compute: ...`` (achieved vs peak FLOP/s)."""
    # quick keeps the full run's 80 steps (fewer repeats): on the two cycled demo batches the gradient
    # norm is above the clip limit for the first ~25 steps, so 40 steps measured another mix of steps
    steps, repeats = steps or 80, repeats or (3 if quick else 5)
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="mmtrain-bench-step-") as tmp:
        try:
            cfg, task, batches, prefixes = setup(Path(tmp), batch)
            shipped, default = demo_threads(compose_config(["experiment=demo"])), torch.get_num_threads()
            runs = {n: compare(cfg, task, batches, prefixes, steps, repeats, Path(tmp), n)
                    for n in dict.fromkeys([shipped, default])}
            flops = step_flops(task, batches[0])
            peak = matmul_peak()
        finally:
            os.chdir(here)
    size = len(batches[0]["ids"])
    rows = []
    for n, times in runs.items():
        (loop_s, _, _), (ours_s, ours_r, ours_p), (perf_s, perf_r, perf_p), (plain_s, plain_r, _), (theirs_s, theirs_r, _) = (
            times[k] for k in ("loop", "ours", "ours_perf", "plain", "theirs"))
        how = f"{n} thread{'s' if n > 1 else ''}" + (" (the demo's setting)" if n == shipped else " (torch's default)")
        rows += [
            goal_row(f"step: mmtrain (Lightning, default callbacks) vs a hand-written loop, batch {size}, {how}",
                     f"{ours_s * 1e3:.1f} ms", f"{loop_s * 1e3:.1f} ms", ours_r, OVERHEAD_GOAL, at_most=True),
            goal_row(f"step: mmtrain, no patch of any library (Python API) vs plain Lightning, {how}",
                     f"{ours_s * 1e3:.1f} ms", f"{plain_s * 1e3:.1f} ms", ours_p, PLAIN_GOAL, at_most=True),
            Result(f"step: mmtrain with perf.lightning_fixes (the mmtrain command) vs plain Lightning, {how}",
                   f"{perf_s * 1e3:.1f} ms", f"{plain_s * 1e3:.1f} ms", perf_p),
            Result(f"step: mmtrain with perf.lightning_fixes vs the loop, {how}",
                   f"{perf_s * 1e3:.1f} ms", f"{loop_s * 1e3:.1f} ms", perf_r),
            Result(f"step: plain Lightning (minimal LightningModule, loss logged) vs the loop, {how}",
                   f"{plain_s * 1e3:.1f} ms", f"{loop_s * 1e3:.1f} ms", plain_r),
            Result(f"step: transformers Trainer vs the loop, {how}", f"{theirs_s * 1e3:.1f} ms",
                   f"{loop_s * 1e3:.1f} ms", theirs_r),
        ]
    loop_s = runs[shipped]["loop"][0]
    achieved = flops / loop_s
    rows.append(Result(f"compute: achieved FLOP/s of a step ({flops / 1e9:.2f} GFLOP, {shipped} thread(s)) vs "
                       f"float32 matmul peak ({torch.get_num_threads()} threads)",
                       f"{achieved / 1e9:.1f} GFLOP/s", f"{peak / 1e9:.1f} GFLOP/s", achieved / peak))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None, help="samples per batch (default: the demo's, 16)")
    args = parser.parse_args()
    with_malloc_tunables()
    results = run(steps=args.steps, repeats=args.repeats, batch=args.batch)
    return 0 if print_table(f"training step (median over steps {WARMUP}+ of {args.steps}, "
                            f"{args.repeats} alternating repeats)", results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
