"""``TorchThreads``: the number of CPU threads torch uses while a Lightning stage runs."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class TorchThreads(pl.Callback):
    """Sets ``torch.set_num_threads(num_threads)`` from setup to teardown of each fit/validate/test.

    Tiny models on a small, shared CPU often run far faster on one thread than on several (each
    op is too small to split, and waiting for a descheduled worker thread dominates); measure
    before raising it. The previous thread count is restored at teardown.

    Args:
        num_threads: intra-op threads (>= 1).
    """

    def __init__(self, *, num_threads: int = 1) -> None:
        if int(num_threads) < 1:
            raise ValueError(f"callbacks.threads.num_threads must be >= 1, got {num_threads}")
        self.num_threads = int(num_threads)
        self._previous: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None:
            torch.set_num_threads(self._previous)
            self._previous = None
