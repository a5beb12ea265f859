"""Shared LightningModule base: optimizer and scheduler from config, one step for every split."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.optim import Optimizer

log = logging.getLogger(__name__)
# Lightning warns about modules in eval mode at fit start; frozen components are, on purpose
# (MultimodalPreTrainedModel.train), and on_fit_start names them instead.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")

OptimizerFactory = Callable[..., Optimizer]
SchedulerFactory = Callable[..., Any]


class TaskBase(pl.LightningModule):
    """Holds the model and builds the optimizer (``_partial_`` factory) over trainable parameters.

    Args:
        model: the ``nn.Module`` being trained.
        optimizer: ``functools.partial`` of an optimizer class, called with the parameters.
        scheduler: optional ``partial`` called as ``scheduler(optimizer, total_steps=...)``;
            stepped every optimizer step.
        param_groups: optimizer settings per part of the model, keyed by module path
            (``head``, ``fusion``, ``encoders.image``...), e.g. ``{head: {lr: 1e-3}}``; each
            trainable parameter joins the group of the longest path it lies under, the rest keep
            the optimizer's own settings.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        param_groups: dict[str, dict[str, float]] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.param_groups = {str(k): dict(v) for k, v in (param_groups or {}).items()}

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters split by ``param_groups`` (default group first, empty ones dropped).

        Raises:
            ValueError: every parameter is frozen, or a group path matches no trainable parameter.
        """
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("every model parameter is frozen (model.trainable); nothing to train.")
        paths = sorted(self.param_groups, key=len, reverse=True)
        members: dict[str | None, list[nn.Parameter]] = {None: [], **{path: [] for path in paths}}
        for name, param in named:
            path = next((p for p in paths if name == p or name.startswith(p + ".")), None)
            members[path].append(param)
        empty = [path for path in paths if not members[path]]
        if empty:
            tops = sorted({n.split(".")[0] for n, _ in named})
            raise ValueError(
                f"task.param_groups: {empty} match no trainable parameter of the model "
                f"(paths are module names such as {tops} or 'encoders.<slot>')."
            )
        groups = [{"params": members[None]}] if members[None] else []
        groups += [{"params": members[p], **self.param_groups[p]} for p in self.param_groups]
        return groups

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.optimizer_groups())
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        frozen = sorted(getattr(self.model, "frozen", ()))
        if frozen:
            log.info("frozen (no gradients, kept in eval mode): %s", ", ".join(frozen))

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
