"""Pairwise comparison task: cross-entropy + swap consistency; Bradley-Terry scores at val/test end.

Outcome of a comparison of ``(a, b)``: 1 when ``a`` scores higher (``First``), 0 when ``b`` does
(``Second``), 0.5 when ``Similar``. At the end of val and test, Bradley-Terry scores are fitted
over the items of the split (``batch["item_ids"]``) from the model's **expected outcome**
``p_first + 0.5 * p_similar`` (``bt_outcome: expected``, the default; ``predicted`` uses the
arg-max class instead) and compared with the items' true scores (``batch["item_scores"]``):
``bt_pearson``, ``bt_spearman``. The same fit from the true labels (``bt_pearson_from_labels``,
``bt_spearman_from_labels``) is the ceiling the comparisons themselves allow.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from mmtrain.models.processing import model_inputs
from mmtrain.components.losses.pairwise import swap_consistency
from mmtrain.components.metrics.bradley_terry import fit_bradley_terry, score_correlations
from mmtrain.engine.tasks.base import OptimizerFactory, SchedulerFactory
from mmtrain.engine.tasks.classification import ClassificationTask

BT_OUTCOMES = ("expected", "predicted")


class PairwiseTask(ClassificationTask):
    """Trains a pairwise comparator (e.g. ``PairwiseModel``) on First / Second / Similar labels.

    Loss: ``CE(logits(a, b), labels) + swap_weight * swap_consistency(logits(a, b), logits(b, a))``
    (both orders from one encoding pass; ``swap_weight: 0`` skips the reversed order in training).
    Logged: ``<split>/loss``, ``<split>/ce``, ``<split>/swap``. Results per split (``self.results``):
    the classification metrics (acc, macro_f1, per_class_acc, confusion) and, for val and test,
    ``swap_consistency_rate`` (fraction of pairs whose reversed prediction is the mirror),
    ``bt_pearson``, ``bt_spearman``, ``bt_pearson_from_labels``, ``bt_spearman_from_labels``,
    ``bt_items``, ``bt_pairs`` (a correlation is ``None`` when fewer than 2 items have a score).

    Args:
        model: a model with ``compare_both_orders(**batch) -> (logits_ab, logits_ba)`` [B, C] each.
        optimizer, scheduler, param_groups, nonfinite: see :class:`~mmtrain.engine.tasks.base.TaskBase`.
        label_names: the data's classes; must include ``First`` and ``Second`` (and may ``Similar``).
        loss: loss on ``(logits, labels)``; cross-entropy when ``None``.
        swap_weight: weight of the swap-consistency term (0 disables it).
        bt_outcome: ``expected`` (p_first + 0.5 p_similar) or ``predicted`` (arg-max class).
        bt_l2: L2 penalty of the Bradley-Terry fit.
    """

    # Items of a pair are compared as wholes; one-modality-only testing is a classifier's.
    only_modality_metrics = ()

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
        swap_weight: float = 0.5,
        bt_outcome: str = "expected",
        bt_l2: float = 1e-2,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, label_names=label_names, scheduler=scheduler,
                         loss=loss, param_groups=param_groups, nonfinite=nonfinite)
        names = list(label_names)
        if "First" not in names or "Second" not in names:
            raise ValueError(f"task: PairwiseTask needs the labels First and Second (and optionally Similar), got {names}.")
        if float(swap_weight) < 0:
            raise ValueError(f"task.swap_weight must be >= 0, got {swap_weight}")
        if bt_outcome not in BT_OUTCOMES:
            raise ValueError(f"task.bt_outcome must be one of {list(BT_OUTCOMES)}, got {bt_outcome!r}")
        if not hasattr(model, "compare_both_orders"):
            raise ValueError("task: PairwiseTask needs a pairwise model (model=pairwise) with compare_both_orders().")
        self.swap_weight = float(swap_weight)
        self.bt_outcome = bt_outcome
        self.bt_l2 = float(bt_l2)
        first, second = names.index("First"), names.index("Second")
        self.mirror = [second if i == first else first if i == second else i for i in range(len(names))]
        # outcome value of each class for Bradley-Terry: First 1, Second 0, anything else 0.5
        self.class_outcome = torch.tensor([1.0 if n == "First" else 0.0 if n == "Second" else 0.5 for n in names])
        self._pairs: dict[str, list[dict[str, Any]]] = {"val": [], "test": []}

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits [B, C] for the pairs in the batch's order."""
        inputs = model_inputs(batch)
        inputs.pop("labels", None)
        return self.model(**inputs).logits

    def step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        if "labels" not in batch:
            raise ValueError(f"a {split} batch has no labels (sample ids {batch['ids'][:5]}...).")
        labels = batch["labels"]
        inputs = model_inputs(batch)
        inputs.pop("labels", None)
        both = split != "train" or self.swap_weight > 0
        if both:
            logits, reversed_logits = self.model.compare_both_orders(**inputs)
        else:
            logits, reversed_logits = self.model(**inputs).logits, None
        self.sample_rows = logits  # [B, 3]: a NaN/Inf loss names the pairs whose logits are not finite
        ce = self.loss_fn(logits, labels)
        swap = swap_consistency(logits, reversed_logits, mirror=self.mirror) if both else ce.new_zeros(())
        loss = ce + self.swap_weight * swap if self.swap_weight > 0 else ce
        self.metrics[f"{split}_metrics"].update(logits.detach(), labels)
        size = self.batch_size_of(batch)
        self.log_batch_value(f"{split}/loss", loss, batch_size=size, on_step=split == "train", prog_bar=True)
        self.log_batch_value(f"{split}/ce", ce, batch_size=size)
        self.log_batch_value(f"{split}/swap", swap, batch_size=size)
        if split in self._pairs:
            self._pairs[split].append({
                "probs": logits.detach().float().softmax(-1).cpu(),
                "reversed_pred": reversed_logits.detach().argmax(-1).cpu(),
                "labels": labels.detach().cpu(),
                "item_ids": batch.get("item_ids"),
                "item_scores": batch.get("item_scores"),
            })
        return loss

    def on_validation_epoch_start(self) -> None:
        self._pairs["val"] = []

    def on_test_epoch_start(self) -> None:
        self._pairs["test"] = []

    def _finish(self, split: str) -> None:
        super()._finish(split)
        if split not in self._pairs or not self._pairs[split]:
            return
        extra = self.pair_results(self._pairs[split])
        self._pairs[split] = []
        self.results[split].update(extra)
        self.log_split_results(split, {key: extra[key] for key in ("swap_consistency_rate", "bt_pearson", "bt_spearman")
                                       if extra.get(key) is not None}, prog_bar=("bt_spearman",) if split == "val" else ())

    def pair_results(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Swap-consistency rate and Bradley-Terry correlations from one split's collected batches."""
        probs = torch.cat([r["probs"] for r in records])
        labels = torch.cat([r["labels"] for r in records])
        reversed_pred = torch.cat([r["reversed_pred"] for r in records])
        mirror = torch.tensor(self.mirror)
        result: dict[str, Any] = {
            "swap_consistency_rate": float((reversed_pred == mirror[probs.argmax(-1)]).float().mean()),
        }
        if any(r["item_ids"] is None for r in records):
            return result  # no item ids: Bradley-Terry needs to know which items were compared
        pairs = [pair for r in records for pair in r["item_ids"]]
        scores = [
            r["item_scores"].tolist() if r["item_scores"] is not None else [[math.nan] * 2] * len(r["item_ids"])
            for r in records
        ]
        flat_scores = [row for chunk in scores for row in chunk]
        if self.bt_outcome == "expected":
            predicted = (probs * self.class_outcome).sum(-1)
        else:
            predicted = self.class_outcome[probs.argmax(-1)]
        truth = self.class_outcome[labels]
        result.update(bradley_terry_report(pairs, flat_scores, predicted.numpy(), truth.numpy(), l2=self.bt_l2))
        return result


def bradley_terry_report(
    pairs: list[tuple[str, ...]],
    pair_scores: list[list[float]],
    predicted: np.ndarray,
    truth: np.ndarray,
    *,
    l2: float = 1e-2,
) -> dict[str, Any]:
    """Bradley-Terry scores from predicted and from true outcomes, correlated with the true item scores.

    Args:
        pairs: ``(id_a, id_b)`` per comparison.
        pair_scores: ``[score_a, score_b]`` per comparison (NaN when unknown).
        predicted: float [M] predicted outcome in [0, 1] (1 = a scores higher).
        truth: float [M] true outcome (1, 0 or 0.5).
        l2: penalty of the fit.

    Returns:
        ``bt_pearson``, ``bt_spearman`` (from ``predicted``), ``bt_pearson_from_labels``,
        ``bt_spearman_from_labels`` (from ``truth``), ``bt_items``, ``bt_pairs``; a correlation is
        ``None`` when fewer than 2 items have a known score or a side is constant.
    """
    index: dict[str, int] = {}
    true_score: dict[str, float] = {}
    for (a, b), (sa, sb) in zip(pairs, pair_scores, strict=True):
        for item, score in ((a, sa), (b, sb)):
            index.setdefault(item, len(index))
            if not math.isnan(score):
                true_score.setdefault(item, float(score))
    first = np.array([index[a] for a, _ in pairs], dtype=np.int64)
    second = np.array([index[b] for _, b in pairs], dtype=np.int64)
    known = [i for item, i in index.items() if item in true_score]
    reference = np.array([true_score[item] for item, i in index.items() if item in true_score])
    result: dict[str, Any] = {"bt_items": len(index), "bt_pairs": len(pairs)}
    for suffix, outcome in (("", predicted), ("_from_labels", truth)):
        fitted = fit_bradley_terry(first, second, np.clip(outcome, 0.0, 1.0), len(index), l2=l2)
        corr = _correlations(fitted[known], reference) if len(known) >= 2 else {}
        result[f"bt_pearson{suffix}"] = corr.get("pearson")
        result[f"bt_spearman{suffix}"] = corr.get("spearman")
    return result


def _correlations(pred: np.ndarray, true: np.ndarray) -> dict[str, float | None]:
    """Pearson/Spearman, with NaN (a constant side) as ``None`` so results stay valid JSON."""
    if np.ptp(pred) == 0 or np.ptp(true) == 0:
        return {}
    return {k: (None if math.isnan(v) else v) for k, v in score_correlations(pred, true).items()}
