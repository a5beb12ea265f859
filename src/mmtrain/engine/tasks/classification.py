"""Classification task: cross-entropy over the model's logits, accuracy / macro-F1 / confusion."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmtrain.components.metrics.classification import ClassificationMetrics
from mmtrain.engine.tasks.aux_terms import AuxiliaryTerms
from mmtrain.engine.tasks.base import OptimizerFactory, SchedulerFactory, TaskBase


class ClassificationTask(AuxiliaryTerms, TaskBase):
    """Trains a model whose forward returns ``.logits`` [B, C] against ``labels`` [B].

    Args:
        model: e.g. ``MultimodalModel``.
        optimizer, scheduler: factories (see :class:`TaskBase`).
        label_names: class names (from the data's label map).
        loss: loss module taking ``(logits, labels)``; cross-entropy when ``None``.
        param_groups: optimizer settings per model part (see :class:`TaskBase`).
        nonfinite: NaN/Inf policy, ``abort`` or ``skip`` (see :class:`TaskBase`).
        aux_weights: encoder slot -> weight of its auxiliary classifier's loss (``model.aux_heads``; the seeds'
            ``lambda_video``...), over the samples that have the slot's modality; ``None``: none.
        fused_weight: weight of the fused classifier's loss (the seeds' ``lambda_fusion``).

    The training objective is ``fused_weight * loss(fused) + sum(aux_weights[m] * loss(aux_m))``; with
    auxiliary terms each is logged apart (see :mod:`mmtrain.engine.tasks.aux_terms`).
    """

    primary_metric = "acc"
    higher_is_better = True
    monitor_metric = "macro_f1"  # checkpoints follow macro-F1: robust to a majority class
    only_modality_metrics = ("acc", "macro_f1")

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
        aux_weights: dict[str, float] | None = None,
        fused_weight: float = 1.0,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler, param_groups=param_groups,
                         nonfinite=nonfinite)
        self.setup_aux(model, aux_weights, fused_weight)
        self.label_names = list(label_names)
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
        # ModuleDict keys cannot be "train" (an nn.Module method), hence the suffix.
        self.metrics = nn.ModuleDict(
            {f"{s}_metrics": ClassificationMetrics(self.label_names) for s in ("train", "val", "test")}
        )

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(**self.model_batch(batch)).logits

    def step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        if "labels" not in batch:
            raise ValueError(f"a {split} batch has no labels (sample ids {batch['ids'][:5]}...).")
        out = self.model(**self.model_batch(batch))
        logits, labels, size = out.logits, batch["labels"], self.batch_size_of(batch)
        self.sample_rows = logits  # [B, C]: a NaN/Inf loss names the samples whose logits are not finite
        loss = self.with_aux_terms(self.loss_fn(logits, labels), out, batch, labels, self.loss_fn, split)
        self.metrics[f"{split}_metrics"].update(logits.detach(), labels)
        self.log_batch_value(f"{split}/loss", loss, batch_size=size, on_step=split == "train", prog_bar=True)
        return loss

    def _finish(self, split: str) -> None:
        result = self.metrics[f"{split}_metrics"].compute()
        self.results[split] = result
        self.log_split_results(split, {"acc": result["acc"], "macro_f1": result["macro_f1"]},
                               prog_bar=("acc", "macro_f1") if split == "val" else ("acc",) if split == "test" else ())

    def on_train_epoch_end(self) -> None:
        self._finish("train")
