"""Keep forked DataLoader workers sharing the main process's memory (``perf.gc_freeze``, opt-in).

Forked workers share the main process's pages until either side writes to one (copy-on-write).
CPython writes to every object it tracks whenever a full garbage collection walks the heap (the
collector keeps its counts in each object's header). One full collection in the main process while
persistent workers are alive therefore copies every page of Python objects it walks, once per
worker: on the streamed-parquet memory benchmark (2 train + 2 val workers) the job's summed PSS
jumped from about 775 to 895 MiB at whatever moment CPython chose to collect. :func:`gc.freeze`
before the fork moves every object that exists then into a generation the collector never walks
(Python's documentation recommends exactly this for fork without exec).

:class:`FreezeBeforeFork` freezes at ``setup`` (after the datamodule and model exist, before any
loader starts its workers) and hands back exactly what it froze at ``teardown``. When the host
process has frozen objects of its own, it freezes nothing: :func:`gc.unfreeze` cannot tell whose
objects are whose, and mmtrain never unfreezes what it did not freeze.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger(__name__)


def forks_workers(datamodule: Any) -> bool:
    """Whether ``datamodule``'s loaders start worker processes by fork (Linux's default)."""
    if int(getattr(datamodule, "num_workers", 0) or 0) <= 0:
        return False
    method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
    return method == "fork"


class FreezeBeforeFork(pl.Callback):
    """:func:`gc.freeze` from ``setup`` to ``teardown`` of each fit / validate / test whose data is
    served by forked workers; undoes only its own freeze."""

    def __init__(self) -> None:
        self.frozen = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.frozen or not forks_workers(trainer.datamodule):
            return
        if gc.get_freeze_count():
            log.debug("perf.gc_freeze: %d objects were frozen before the run (not by mmtrain): "
                      "nothing more is frozen", gc.get_freeze_count())
            return
        gc.freeze()
        self.frozen = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.frozen:
            gc.unfreeze()
            self.frozen = False
