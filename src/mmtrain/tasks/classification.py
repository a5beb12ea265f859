"""Classification task: cross-entropy over the model's logits, accuracy / macro-F1 / confusion."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmtrain.hf.processing import model_inputs
from mmtrain.metrics.classification import ClassificationMetrics
from mmtrain.tasks.base import OptimizerFactory, SchedulerFactory, TaskBase


class ClassificationTask(TaskBase):
    """Trains a model whose forward returns ``.logits`` [B, C] against ``labels`` [B].

    Args:
        model: e.g. ``MultimodalModel``.
        optimizer, scheduler: factories (see :class:`TaskBase`).
        label_names: class names (from the data's label map).
        loss: loss module taking ``(logits, labels)``; cross-entropy when ``None``.
        param_groups: optimizer settings per model part (see :class:`TaskBase`).
        nonfinite: NaN/Inf policy, ``abort`` or ``skip`` (see :class:`TaskBase`).
    """

    #: Whether train()'s ``evaluate_unimodal`` may test the model with one modality at a time.
    supports_only_modality = True

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: OptimizerFactory,
        label_names: list[str],
        scheduler: SchedulerFactory | None = None,
        loss: nn.Module | None = None,
        param_groups: dict[str, dict[str, float]] | None = None,
        nonfinite: str = "abort",
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler, param_groups=param_groups,
                         nonfinite=nonfinite)
        self.label_names = list(label_names)
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
        # ModuleDict keys cannot be "train" (an nn.Module method), hence the suffix.
        self.metrics = nn.ModuleDict(
            {f"{s}_metrics": ClassificationMetrics(self.label_names) for s in ("train", "val", "test")}
        )
        self.results: dict[str, dict[str, Any]] = {}
        #: When set, every other modality is marked absent (unimodal evaluation of a fused model).
        self.only_modality: str | None = None

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        inputs = model_inputs(batch)
        inputs.pop("labels", None)
        if self.only_modality is not None:
            for key in [k for k in inputs if k.endswith("_present")]:
                if key != f"{self.only_modality}_present":
                    inputs[key] = torch.zeros_like(inputs[key])
        return self.model(**inputs).logits

    def step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        if "labels" not in batch:
            raise ValueError(f"a {split} batch has no labels (sample ids {batch['ids'][:5]}...).")
        logits = self(batch)
        self.sample_rows = logits  # [B, C]: a NaN/Inf loss names the samples whose logits are not finite
        loss = self.loss_fn(logits, batch["labels"])
        self.metrics[f"{split}_metrics"].update(logits.detach(), batch["labels"])
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=self.batch_size_of(batch),
                 on_step=split == "train", on_epoch=True)
        return loss

    def _finish(self, split: str) -> None:
        result = self.metrics[f"{split}_metrics"].compute()
        self.results[split] = result
        self.log(f"{split}/acc", result["acc"], prog_bar=split != "train")
        self.log(f"{split}/macro_f1", result["macro_f1"], prog_bar=split == "val")

    def on_train_epoch_end(self) -> None:
        self._finish("train")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._finish("val")
        else:
            self.metrics["val_metrics"].compute()

    def on_test_epoch_end(self) -> None:
        self._finish("test")
