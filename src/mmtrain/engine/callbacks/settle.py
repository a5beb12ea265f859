"""Reduce Lightning's lazily synchronised epoch values on every rank at one point, first.

A value logged with ``sync_dist=True`` and ``on_epoch=True`` (each rank's loss) is all-reduced lazily,
where it is first read. On rank 0 the progress bar reads it at ``on_train_epoch_end``, while the other
ranks skip that read and go on to the next collective - the task's torchmetrics ``compute()``, the
skip ledger's sums - so the ranks' collectives pair up wrongly and the job hangs (seen with two gloo
ranks). Reading the metrics on every rank before any other callback of the hook settles them in the same
order everywhere; later reads find them computed.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl


class SettleSyncedMetrics(pl.Callback):
    """At each epoch end, before the other callbacks and the task, compute the logged epoch values on
    every rank (a no-op in one process). Put it first in the trainer's callbacks."""

    @staticmethod
    def _settle(trainer: pl.Trainer) -> None:
        if trainer.world_size > 1:
            trainer.callback_metrics  # noqa: B018 - the read computes (and all-reduces) every pending value

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._settle(trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._settle(trainer)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._settle(trainer)
