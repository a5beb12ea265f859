"""Regression task: a loss on the model's predicted values (MSE, L1, Huber...), MAE / RMSE / Pearson /
Spearman on val and test."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmtrain.components.metrics.regression import RegressionMetrics
from mmtrain.engine.tasks.aux_terms import AuxiliaryTerms
from mmtrain.engine.tasks.base import OptimizerFactory, SchedulerFactory, TaskBase


class RegressionTask(AuxiliaryTerms, TaskBase):
    """Trains a model whose forward returns ``.logits`` [B, K] (predicted values, e.g.
    :class:`~mmtrain.models.regression.RegressionModel`) against float ``labels`` [B, K].

    Args:
        model: the regressor.
        optimizer, scheduler: factories (see :class:`TaskBase`).
        label_names: the data's class names, if it has any (unused: regression targets are numbers).
        loss: loss module on ``(predictions, targets)``: ``torch.nn.MSELoss`` (default), ``L1Loss``,
            ``HuberLoss``...
        param_groups: optimizer settings per model part (see :class:`TaskBase`).
        nonfinite: NaN/Inf policy, ``abort`` or ``skip`` (see :class:`TaskBase`).
        aux_weights: encoder slot -> weight of its auxiliary regressor's loss (``model.aux_heads``), against the
            data's per-modality target where it gives one (CH-SIMS ``label_T`` / ``label_A`` / ``label_V``), else
            the fused target; ``fused_weight``: the fused prediction's weight (:mod:`mmtrain.engine.tasks.aux_terms`).
    """

    primary_metric = "mae"
    higher_is_better = False
    only_modality_metrics = ("mae", "rmse", "pearson")

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: OptimizerFactory,
        label_names: list[str] | None = None,
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
        self.loss_fn = loss if loss is not None else nn.MSELoss()
        names = list(getattr(getattr(model, "config", None), "target_names", None) or ["value"])
        # ModuleDict keys cannot be "train" (an nn.Module method), hence the suffix.
        self.metrics = nn.ModuleDict({f"{s}_metrics": RegressionMetrics(names, spearman=s != "train")
                                      for s in ("train", "val", "test")})

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.model(**self.model_batch(batch)).logits

    def step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        labels = batch.get("labels")
        if labels is None or not torch.is_floating_point(labels):
            raise ValueError(f"a {split} batch has no float regression targets (sample ids {batch['ids'][:5]}...): "
                             "set the data format's target_key to the column holding them.")
        out = self.model(**self.model_batch(batch))
        values = out.logits
        targets = labels.to(values.dtype).reshape(values.shape)
        self.sample_rows = values  # [B, K]: a NaN/Inf loss names the samples whose predictions are not finite
        loss = self.with_aux_terms(self.loss_fn(values, targets), out, batch, targets, self.loss_fn, split)
        self.metrics[f"{split}_metrics"].update(values, targets)
        self.log_batch_value(f"{split}/loss", loss, batch_size=self.batch_size_of(batch), on_step=split == "train",
                             prog_bar=True)
        return loss

    def _finish(self, split: str) -> None:
        result = self.metrics[f"{split}_metrics"].compute()
        self.results[split] = result
        self.log_split_results(split, {name: result[name] for name in ("mae", "rmse", "pearson", "spearman")
                                       if name in result}, prog_bar=("mae",) if split != "train" else ())

    def on_train_epoch_end(self) -> None:
        self._finish("train")
