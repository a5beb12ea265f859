"""``SkipLedger``: every skipped sample written to ``skipped.jsonl``, counted, and held to a budget."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from mmtrain.core.fileio import append_line, truncate

log = logging.getLogger(__name__)

LEDGER_NAME = "skipped.jsonl"


class SkipBudgetExceeded(ValueError):
    """More samples were skipped than ``max_skip_fraction`` allows."""


class SkipLedger(pl.Callback):
    """Appends ``batch["skipped"]`` records (from every DataLoader worker) to ``<run_dir>/skipped.jsonl``.

    Each line: ``{"id", "file", "modality", "error", "split", "epoch", "step", "rank"}``. Counts per
    split are logged each epoch (``train/skipped``...). The run stops with :class:`SkipBudgetExceeded`
    (naming the counts, the ledger, the key that raises the budget and ``mmtrain data check``) only
    when a split is over ``max_skip_fraction`` for certain, never on an unlucky start:

    * a split of known size ``N`` stops mid-pass once more than ``max_skip_fraction * N`` of its
      samples were skipped (over budget even if every remaining one decodes), and at the end of a
      pass when the pass's skipped fraction is over the budget;
    * a stream of unknown size stops once the lower bound of the skipped rate's 99.9% confidence
      interval (Wilson score, after ``min_samples`` samples) is above the budget.

    Under DDP each rank sees its shard; at the end of every pass (train epoch, validation, test) the
    pass's counts are summed over ranks (one ``all_reduce``, on every rank at the same hook), so
    ``seen``/``skipped`` and :meth:`summary` are those of the whole split on every rank. The repeats
    a ``DistributedSampler`` adds so that every rank gets the same number of samples (at most
    ``world_size - 1`` per pass) are not counted as seen: ``seen`` is the split's size per pass.

    Args:
        run_dir: run directory (the ledger is written there).
        max_skip_fraction: allowed fraction of skipped samples per split, in [0, 1].
        min_samples: samples a split must have seen before the budget is enforced.
    """

    def __init__(self, *, run_dir: str, max_skip_fraction: float = 0.05, min_samples: int = 32) -> None:
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
        self.path = Path(run_dir) / LEDGER_NAME
        self.max_skip_fraction = float(max_skip_fraction)
        self.min_samples = int(min_samples)
        self.seen: Counter[str] = Counter()  # finished passes, all ranks
        self.skipped: Counter[str] = Counter()  # finished passes, all ranks
        self.pass_seen: Counter[str] = Counter()  # the current pass, this rank
        self.epoch_skipped: Counter[str] = Counter()  # the current pass, this rank
        self._sizes: dict[str, int | None] = {}  # samples in a pass of each split (None: a stream)

    def state_dict(self) -> dict[str, Any]:
        """Counts so far and the ledger's length: a resumed run neither double-counts nor re-lists
        the samples of the steps it replays."""
        # Under DDP the checkpoint holds rank 0's state: the finished passes are global (the same on every
        # rank); the current pass's counts are rank 0's, which every rank takes back on resume.
        return {"seen": dict(self.seen), "skipped": dict(self.skipped), "epoch_skipped": dict(self.epoch_skipped),
                "pass_seen": dict(self.pass_seen), "bytes": self.path.stat().st_size if self.path.exists() else 0}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seen = Counter(state_dict.get("seen", {}))
        self.skipped = Counter(state_dict.get("skipped", {}))
        self.epoch_skipped = Counter(state_dict.get("epoch_skipped", {}))
        self.pass_seen = Counter(state_dict.get("pass_seen", {}))
        self._truncate_to = int(state_dict.get("bytes", 0))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        size = getattr(self, "_truncate_to", None)
        if size is not None and trainer.is_global_zero:
            truncate(self.path, size)
        self._truncate_to = None

    def _record(self, trainer: pl.Trainer, batch: Any, split: str) -> None:
        if not isinstance(batch, dict):
            return
        records = batch.get("skipped") or []
        self.pass_seen[split] += len(batch.get("ids", [])) + len(records)
        if split not in self._sizes:
            self._sizes[split] = split_size(trainer, split)
        if records:
            self.epoch_skipped[split] += len(records)
            lines = "".join(
                json.dumps({**r, "split": split, "epoch": trainer.current_epoch, "step": trainer.global_step,
                            "rank": trainer.global_rank}) + "\n"
                for r in records
            )
            append_line(self.path, lines)  # one O_APPEND write per batch: ranks never interleave
            self._check_budget(split, self._sizes[split])

    def _check_budget(self, split: str, size: int | None) -> None:
        """Mid-pass: stop only when ``split`` (``size`` samples a pass, ``None``: unknown) is over budget
        for certain (known size) or with 99.9% confidence (a stream)."""
        if size:
            skipped, seen = self.epoch_skipped[split], self.pass_seen[split]
            if skipped > self.max_skip_fraction * size:
                self._stop(split, skipped, seen, f"already more than {self.max_skip_fraction:.1%} of the {size} samples")
            return
        seen = self.seen[split] + self.pass_seen[split]
        skipped = self.skipped[split] + self.epoch_skipped[split]
        if seen >= self.min_samples and wilson_lower_bound(skipped, seen) > self.max_skip_fraction:
            self._stop(split, skipped, seen, "a rate above the budget with 99.9% confidence")

    def _stop(self, split: str, skipped: int, seen: int, why: str) -> None:
        raise SkipBudgetExceeded(
            f"{skipped} of {seen} {split} samples seen so far ({skipped / max(seen, 1):.1%}) could not be decoded and "
            f"were skipped: {why}, over the budget callbacks.skip_ledger.max_skip_fraction={self.max_skip_fraction}. "
            f"See {self.path} for each file and error. To list every bad file before training, run "
            f"`mmtrain data check <the same overrides>`; to accept more, raise the budget "
            f"(callbacks.skip_ledger.max_skip_fraction=0.1)."
        )

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._record(trainer, batch, "train")

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, batch, "val")

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._record(trainer, batch, "test")

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        """End of a pass: its counts, summed over ranks, join the totals; ``<split>/skipped`` is logged.

        Called on every rank at the same hook. The count is already global, so rank 0 hands it to the loggers
        itself: through ``self.log`` Lightning would either warn that it is not synchronised or reduce it
        again, lazily, wherever it is first read - on rank 0 alone that is the progress bar, a collective
        the other ranks never join (a hang).
        """
        seen = self.pass_seen.pop(split, 0)
        seen -= padding_seen(split_sampler(trainer, split), seen)
        seen, count = sum_over_ranks([seen, self.epoch_skipped.pop(split, 0)], pl_module.device)
        self.seen[split] += seen
        self.skipped[split] += count
        self._sizes.pop(split, None)  # the next pass may see another loader (a re-built one, a new limit)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"{split}/skipped": float(count)}, step=trainer.global_step)
            if count:
                log.warning("%s epoch: %d samples skipped (ledger: %s)", split, count, self.path)
        if seen and count > self.max_skip_fraction * seen:  # the whole pass, all ranks: the same on every rank
            self._stop(split, count, seen, "the whole pass")

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pass_seen.pop("val", None)  # a pass that did not finish (sanity check, interrupted) counts nothing
        self.epoch_skipped.pop("val", None)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pass_seen.pop("test", None)
        self.epoch_skipped.pop("test", None)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, pl_module, "test")

    def summary(self) -> dict[str, dict[str, int]]:
        """``{split: {"seen": n, "skipped": k}}`` over the whole run and, under DDP, over all ranks.

        No collective: the totals were summed over ranks at the end of each pass (a pass still in
        progress, e.g. after an error, adds this rank's counts only).
        """
        splits = sorted(set(self.seen) | set(self.pass_seen))
        return {s: {"seen": self.seen[s] + self.pass_seen[s], "skipped": self.skipped[s] + self.epoch_skipped[s]}
                for s in splits}


def wilson_lower_bound(successes: int, trials: int, z: float = 3.29) -> float:
    """Lower end of the Wilson score interval for a rate (``z`` 3.29: 99.9% two-sided)."""
    if trials <= 0:
        return 0.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, (centre - margin) / denominator)


def split_size(trainer: pl.Trainer, split: str) -> int | None:
    """Samples in one pass of ``split``'s loader (the whole split, all ranks), or ``None`` for a stream."""
    dataset = getattr(split_loader(trainer, split), "dataset", None)
    if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset):
        return None
    try:
        return len(dataset)
    except TypeError:
        return None


def sum_over_ranks(values: list[int], device: torch.device | None = None) -> list[int]:
    """``values`` summed element-wise over every rank (unchanged outside ``torch.distributed``).

    A collective: every rank must call it at the same point.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [int(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.int64, device=device or torch.device("cpu"))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [int(v) for v in tensor.tolist()]


def split_loader(trainer: pl.Trainer, split: str) -> Any:
    """The one loader that feeds ``split`` (None when that loop has none, or has several)."""
    loaders = {"train": lambda: trainer.train_dataloader, "val": lambda: trainer.val_dataloaders,
               "test": lambda: trainer.test_dataloaders}[split]()
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if len(loaders) == 1 else None
    return loaders


def split_sampler(trainer: pl.Trainer, split: str) -> Any:
    """The sampler of the loader that feeds ``split`` (the one Lightning injected under DDP), or None."""
    return getattr(split_loader(trainer, split), "sampler", None)


def padding_seen(sampler: Any, seen: int) -> int:
    """How many of the ``seen`` samples this rank drew in a pass were a ``DistributedSampler``'s padding.

    The sampler extends the split to ``total_size`` (a multiple of the world size) by repeating its
    first samples; positions ``>= len(dataset)`` are the repeats, and rank ``r`` takes positions
    ``r, r + world, ...``, so its repeats are the last ones of its shard.
    """
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return 0
    size, world, rank = len(sampler.dataset), sampler.num_replicas, sampler.rank  # type: ignore[arg-type]
    padded = len(range(size + (rank - size) % world, sampler.total_size, world))
    real = sampler.num_samples - padded
    return max(0, min(padded, seen - real))
