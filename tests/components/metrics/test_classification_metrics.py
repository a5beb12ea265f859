"""Accuracy, macro-F1, per-class accuracy and the confusion matrix agree with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from mmtrain.components.metrics.classification import ClassificationMetrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scikit_learn_over_several_batches(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 7))
    names = [f"c{i}" for i in range(classes)]
    metrics = ClassificationMetrics(names)
    truths, preds = [], []
    for _ in range(4):  # accumulated over batches, as in an epoch
        size = int(rng.integers(1, 30))
        labels = torch.from_numpy(rng.integers(0, classes, size))
        logits = torch.from_numpy(rng.normal(size=(size, classes))).float()
        logits[torch.arange(size), labels] += float(rng.uniform(0, 2))  # better than chance, not perfect
        metrics.update(logits, labels)
        truths.append(labels.numpy())
        preds.append(logits.argmax(-1).numpy())
    y, p = np.concatenate(truths), np.concatenate(preds)
    result = metrics.compute()
    cm = confusion_matrix(y, p, labels=list(range(classes)))
    assert result["acc"] == pytest.approx(accuracy_score(y, p), abs=1e-6)
    # classes absent from both truth and prediction score 0 in torchmetrics and sklearn (zero_division=0)
    assert result["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", labels=list(range(classes)),
                                                        zero_division=0), abs=1e-6)
    assert result["confusion"] == cm.tolist()
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.nan_to_num(cm.diagonal() / cm.sum(axis=1))
    assert list(result["per_class_acc"]) == names
    assert np.allclose(list(result["per_class_acc"].values()), recall, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_values_equal_torchmetrics_own_metrics_bit_for_bit(seed: int) -> None:
    """Reduced from one confusion matrix == MulticlassAccuracy (micro, none) and MulticlassF1Score
    (macro), including classes that never occur as target or prediction."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    gen = torch.Generator().manual_seed(seed)
    classes = 7
    names = [f"c{i}" for i in range(classes)]
    ours = ClassificationMetrics(names)
    reference = [MulticlassAccuracy(num_classes=classes, average="micro"),
                 MulticlassF1Score(num_classes=classes, average="macro"),
                 MulticlassAccuracy(num_classes=classes, average="none")]
    for _ in range(5):
        labels = torch.randint(0, classes - 2 + seed % 2, (13,), generator=gen)  # some classes absent
        logits = torch.randn(13, classes, generator=gen)
        logits[:, classes - 1] -= 100.0 * (seed % 3 == 0)  # and sometimes never predicted
        ours.update(logits, labels)
        for metric in reference:
            metric.update(logits.argmax(-1), labels)
    result = ours.compute()
    acc, f1, per_class = (m.compute() for m in reference)
    assert result["acc"] == float(acc)
    assert result["macro_f1"] == float(f1)
    assert list(result["per_class_acc"].values()) == per_class.tolist()
