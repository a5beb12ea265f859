"""PairwiseTask: loss = CE + swap_weight * swap term; Bradley-Terry report; no one-modality loop."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from mmtrain.components.losses.pairwise import swap_consistency
from mmtrain.engine.tasks.pairwise import PairwiseTask, bradley_terry_report

NAMES = ["First", "Second", "Similar"]


class Scorer(nn.Module):
    """A real (tiny) comparator: item vectors from a linear layer, logits from their difference."""

    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({"image": nn.Linear(4, 3)})
        self.head = nn.Linear(6, 3)

    def compare_both_orders(self, pixel_values: torch.Tensor, **_: object) -> tuple[torch.Tensor, torch.Tensor]:
        items = self.encoders["image"](pixel_values)  # [B, 2, 3]
        u, v = items[:, 0], items[:, 1]
        return self.head(torch.cat([u, v], -1)), self.head(torch.cat([v, u], -1))

    def forward(self, labels: torch.Tensor | None = None, **batch: torch.Tensor) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=self.compare_both_orders(**batch)[0])


def make_task(weight: float) -> PairwiseTask:
    torch.manual_seed(0)
    task = PairwiseTask(model=Scorer(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
                        label_names=NAMES, swap_weight=weight)
    task.log = lambda *args, **kwargs: None  # no trainer attached in these unit tests
    return task


def batch() -> dict:
    torch.manual_seed(1)
    return {"ids": ["a", "b", "c", "d"], "pixel_values": torch.randn(4, 2, 4), "labels": torch.tensor([0, 1, 2, 0]),
            "item_ids": [("x", "y"), ("y", "z"), ("z", "x"), ("x", "z")], "item_scores": torch.rand(4, 2)}


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_loss_is_cross_entropy_plus_weighted_swap_term(weight: float) -> None:
    task = make_task(weight)
    data = batch()
    loss = task.step(data, "train")
    ab, ba = task.model.compare_both_orders(data["pixel_values"])
    expected = F.cross_entropy(ab, data["labels"]) + weight * swap_consistency(ab, ba, mirror=(1, 0, 2))
    torch.testing.assert_close(loss, expected)
    assert weight == 0 or swap_consistency(ab, ba) > 0  # the term is not trivially zero here


def test_pairwise_task_is_not_offered_the_one_modality_loop() -> None:
    assert make_task(0.5).only_modality_metrics == ()  # pairs are compared as wholes
    with pytest.raises(ValueError, match="First and Second"):
        PairwiseTask(model=Scorer(), optimizer=torch.optim.AdamW, label_names=["a", "b", "c"])


def test_bradley_terry_from_a_perfect_predictor_equals_from_labels() -> None:
    rng = np.random.default_rng(0)
    scores = {f"item{i}": float(s) for i, s in enumerate(rng.permutation(12) % 6)}
    names = list(scores)
    pairs = [tuple(rng.choice(names, 2, replace=False)) for _ in range(80)]
    truth = np.array([1.0 if scores[a] > scores[b] else 0.0 if scores[a] < scores[b] else 0.5 for a, b in pairs])
    pair_scores = [[scores[a], scores[b]] for a, b in pairs]
    report = bradley_terry_report(pairs, pair_scores, truth.copy(), truth)
    assert report["bt_pearson"] == report["bt_pearson_from_labels"] > 0.9
    assert report["bt_spearman"] == report["bt_spearman_from_labels"] > 0.9
    assert report["bt_items"] == 12 and report["bt_pairs"] == 80
    unknown = bradley_terry_report(pairs, [[math.nan, math.nan]] * len(pairs), truth, truth)
    assert unknown["bt_pearson"] is None and unknown["bt_spearman_from_labels"] is None


def test_results_hold_swap_rate_and_bt_correlations_after_a_test_epoch() -> None:
    task = make_task(0.5)
    task.on_test_epoch_start()
    with torch.no_grad():
        task.step(batch(), "test")
    task._finish("test")
    result = task.results["test"]
    assert {"acc", "macro_f1", "per_class_acc", "confusion", "swap_consistency_rate", "bt_pearson",
            "bt_spearman", "bt_pearson_from_labels", "bt_spearman_from_labels"} <= set(result)
    assert 0.0 <= result["swap_consistency_rate"] <= 1.0 and result["bt_items"] == 3
