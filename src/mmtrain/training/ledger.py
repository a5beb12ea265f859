"""``SkipLedger``: every skipped sample written to ``skipped.jsonl``, counted, and held to a budget."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger(__name__)

LEDGER_NAME = "skipped.jsonl"


class SkipBudgetExceeded(ValueError):
    """More samples were skipped than ``max_skip_fraction`` allows."""


class SkipLedger(pl.Callback):
    """Appends ``batch["skipped"]`` records (from every DataLoader worker) to ``<run_dir>/skipped.jsonl``.

    Each line: ``{"id", "file", "modality", "error", "split", "epoch", "step", "rank"}``. Counts per
    split are logged each epoch (``train/skipped``...); when, after ``min_samples`` samples of a
    split, the skipped fraction exceeds ``max_skip_fraction``, the run stops with
    :class:`SkipBudgetExceeded` naming the counts and the ledger.

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
        self.seen: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self.epoch_skipped: Counter[str] = Counter()

    def _record(self, trainer: pl.Trainer, batch: Any, split: str) -> None:
        if not isinstance(batch, dict):
            return
        records = batch.get("skipped") or []
        self.seen[split] += len(batch.get("ids", [])) + len(records)
        if records:
            self.skipped[split] += len(records)
            self.epoch_skipped[split] += len(records)
            lines = "".join(
                json.dumps({**r, "split": split, "epoch": trainer.current_epoch, "step": trainer.global_step,
                            "rank": trainer.global_rank}) + "\n"
                for r in records
            )
            # One O_APPEND write per batch: lines from several ranks never interleave.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, lines.encode())
            finally:
                os.close(fd)
        self._check_budget(split)

    def _check_budget(self, split: str) -> None:
        seen, skipped = self.seen[split], self.skipped[split]
        if seen >= self.min_samples and skipped > self.max_skip_fraction * seen:
            raise SkipBudgetExceeded(
                f"{skipped} of {seen} {split} samples ({skipped / seen:.1%}) could not be decoded and were "
                f"skipped, over the budget callbacks.skip_ledger.max_skip_fraction={self.max_skip_fraction}. "
                f"See {self.path} for each file and error."
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

    def _report(self, pl_module: pl.LightningModule, split: str) -> None:
        count = self.epoch_skipped.pop(split, 0)
        pl_module.log(f"{split}/skipped", float(count), reduce_fx="sum", sync_dist=True)
        if count:
            log.warning("%s epoch: %d samples skipped (ledger: %s)", split, count, self.path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(pl_module, "train")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(pl_module, "test")

    def summary(self) -> dict[str, dict[str, int]]:
        """``{split: {"seen": n, "skipped": k}}`` over the whole run."""
        return {s: {"seen": self.seen[s], "skipped": self.skipped[s]} for s in sorted(self.seen)}
