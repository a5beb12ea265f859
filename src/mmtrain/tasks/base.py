"""Shared LightningModule base: optimizer and scheduler from config, one step for every split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.optim import Optimizer

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., Any]


class TaskBase(pl.LightningModule):
    """Holds the model and builds the optimizer (``_partial_`` factory) over trainable parameters.

    Args:
        model: the ``nn.Module`` being trained.
        optimizer: ``functools.partial`` of an optimizer class, called with the parameters.
        scheduler: optional ``partial`` called as ``scheduler(optimizer, total_steps=...)``;
            stepped every optimizer step.
    """

    def __init__(
        self, *, model: nn.Module, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("every model parameter is frozen (model.trainable); nothing to train.")
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if callable(getattr(datamodule, "set_epoch", None)):
            datamodule.set_epoch(self.current_epoch)

    def step(self, batch: dict[str, Any], split: str) -> torch.Tensor | None:
        """Loss of one batch for ``split`` (``train``/``val``/``test``); subclasses implement it."""
        raise NotImplementedError

    # A batch whose samples were all skipped (undecodable media) has no ids: no step is taken.
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        return self.step(batch, "train") if batch["ids"] else None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        return self.step(batch, "val") if batch["ids"] else None

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        return self.step(batch, "test") if batch["ids"] else None

    def batch_size_of(self, batch: dict[str, Any]) -> int:
        return len(batch["ids"])
