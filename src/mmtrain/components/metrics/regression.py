"""Regression metrics (torchmetrics): MAE, RMSE, Pearson and Spearman correlation, per output and averaged."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef


class RegressionMetrics(nn.Module):
    """Accumulates ``(predictions [B, K], targets [B, K])``; :meth:`compute` gives ``mae``, ``rmse``,
    ``pearson``, ``spearman`` (unless left out; means over the K outputs; NaN where a correlation is undefined, e.g. a
    constant prediction) and, with K > 1, each per output (``mae/<name>``...); then resets."""

    def __init__(self, target_names: list[str], spearman: bool = True) -> None:
        """``spearman=False`` leaves out Spearman's rank correlation, which keeps every prediction until
        :meth:`compute` (the task's train split does, to stay constant in memory over an epoch)."""
        super().__init__()
        self.target_names = list(target_names)
        k = len(self.target_names)
        self.mae = MeanAbsoluteError(num_outputs=k)
        self.rmse = MeanSquaredError(squared=False, num_outputs=k)
        self.pearson = PearsonCorrCoef(num_outputs=k)
        self.spearman: SpearmanCorrCoef | None = None
        if spearman:
            with warnings.catch_warnings():  # it keeps every prediction (one float a sample): fine at eval sizes
                warnings.filterwarnings("ignore", message=r".*will save all targets and predictions.*")
                self.spearman = SpearmanCorrCoef(num_outputs=k)

    def _parts(self) -> dict[str, nn.Module]:
        parts = {"mae": self.mae, "rmse": self.rmse, "pearson": self.pearson, "spearman": self.spearman}
        return {name: metric for name, metric in parts.items() if metric is not None}

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        k = len(self.target_names)
        predictions = predictions.detach().float().reshape(-1, k)
        targets = targets.detach().float().reshape(-1, k)
        if k == 1:
            predictions, targets = predictions[:, 0], targets[:, 0]
        for metric in self._parts().values():
            metric.update(predictions, targets)

    def compute(self) -> dict[str, float]:
        result: dict[str, float] = {}
        with warnings.catch_warnings():  # a constant prediction: torchmetrics warns, the value is NaN
            warnings.filterwarnings("ignore", message=r".*(variance|update|constant).*")
            for name, metric in self._parts().items():
                try:
                    values = metric.compute().reshape(-1).tolist()
                except (RuntimeError, ValueError):  # no sample yet
                    values = [math.nan] * len(self.target_names)
                metric.reset()
                result[name] = float(sum(values) / len(values))
                if len(values) > 1:
                    result.update({f"{name}/{target}": float(v) for target, v in zip(self.target_names, values)})
        return result
