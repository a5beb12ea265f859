"""Classification metrics: accuracy, macro-F1, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score


class ClassificationMetrics(nn.Module):
    """Accumulates predictions of one split; :meth:`compute` returns plain Python values.

    Args:
        label_names: class names in index order.
    """

    def __init__(self, label_names: list[str]) -> None:
        super().__init__()
        classes = len(label_names)
        self.label_names = list(label_names)
        self.accuracy = MulticlassAccuracy(num_classes=classes, average="micro")
        self.macro_f1 = MulticlassF1Score(num_classes=classes, average="macro")
        self.per_class = MulticlassAccuracy(num_classes=classes, average="none")
        self.confusion = MulticlassConfusionMatrix(num_classes=classes)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch: ``logits`` [B, C], ``labels`` [B]."""
        preds = logits.argmax(dim=-1)
        for metric in (self.accuracy, self.macro_f1, self.per_class, self.confusion):
            metric.update(preds, labels)

    def compute(self) -> dict[str, Any]:
        """``{"acc", "macro_f1", "per_class_acc": {name: acc}, "confusion": [[...]]}``; then resets."""
        per_class = self.per_class.compute().tolist()
        result = {
            "acc": float(self.accuracy.compute()),
            "macro_f1": float(self.macro_f1.compute()),
            "per_class_acc": dict(zip(self.label_names, per_class)),
            "confusion": self.confusion.compute().tolist(),
        }
        for metric in (self.accuracy, self.macro_f1, self.per_class, self.confusion):
            metric.reset()
        return result
