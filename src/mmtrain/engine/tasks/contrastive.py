"""Contrastive alignment task: pairwise symmetric InfoNCE between slots, Recall@K over whole splits.

The pair losses, DDP global negatives and split-level retrieval are :class:`~mmtrain.engine.tasks.alignment.
PairAlignment`'s; this task adds Matryoshka widths (each pair's loss optionally wrapped in
:class:`~mmtrain.components.losses.matryoshka.MatryoshkaLoss`) and makes the train loss the mean over the
pairs that had at least two samples with both modalities.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mmtrain.components.losses.matryoshka import MatryoshkaLoss
from mmtrain.engine.tasks.alignment import MATCH_RULES, LossSpec, PairAlignment, gather_rows, stable_key
from mmtrain.engine.tasks.base import OptimizerFactory, SchedulerFactory, TaskBase
from mmtrain.models.processing import model_inputs

__all__ = ["MATCH_RULES", "ContrastiveTask", "gather_rows", "stable_key"]


class ContrastiveTask(PairAlignment, TaskBase):
    """Aligns the encoder slots of a :class:`~mmtrain.models.contrastive.ContrastiveModel`.

    Args:
        model: the contrastive model (forward returns ``embeddings`` / ``present`` per slot).
        optimizer, scheduler, param_groups, nonfinite: see :class:`TaskBase`. The losses' temperatures are
            trained too, in their own group without weight decay.
        label_names: class names the runner injects; stored, not used for the loss.
        loss, pairs, eval_pairs, match_by, ks, gather_negatives, loss_scope: see :meth:`PairAlignment.setup_pairs`.
        matryoshka: ``{dims: [...], mode: all|sample, weights, seed}`` wraps each pair's loss in
            ``MatryoshkaLoss``; ``dims`` default to the projection's ``matryoshka_dims``. ``None``
            trains the full width only (nested widths are still evaluated).
    """

    primary_metric = "r@1_mean"
    higher_is_better = True

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        param_groups: dict[str, dict[str, float]] | None = None,
        nonfinite: str = "abort",
        label_names: Sequence[str] | None = None,
        loss: LossSpec = None,
        pairs: Sequence[Sequence[str]] | None = None,
        eval_pairs: Sequence[Sequence[str]] | None = None,
        matryoshka: dict[str, Any] | None = None,
        match_by: str = "id",
        ks: Sequence[int] = (1, 5, 10),
        gather_negatives: bool = True,
        loss_scope: str = "global",
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler, param_groups=param_groups,
                         nonfinite=nonfinite)
        self.label_names = list(label_names or [])
        self.setup_pairs(model, loss=loss, pairs=pairs, eval_pairs=eval_pairs, match_by=match_by, ks=ks,
                         gather_negatives=gather_negatives, loss_scope=loss_scope)
        if matryoshka is not None:
            options = dict(matryoshka)
            dims = self.check_dims(options.pop("dims", None) or model.matryoshka_dims, "task.matryoshka.dims")
            for name in list(self.losses):
                self.losses[name] = MatryoshkaLoss(loss=self.losses[name], dims=dims, **options)

    def forward(self, batch: dict[str, Any]) -> Any:
        inputs = model_inputs(batch)
        inputs.pop("labels", None)
        return self.model(**inputs)

    def train_loss(self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the pair losses over the (global, see :meth:`global_batch`) batch."""
        embeddings, present, mine = self.global_batch(embeddings, present)
        return self._mean_loss(embeddings, present, mine)

    def _mean_loss(self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                   mine: torch.Tensor | None = None) -> torch.Tensor:
        losses = self.pair_losses(embeddings, present, mine=mine)
        if losses:
            return torch.stack(list(losses.values())).mean()
        # no pair has two samples: a zero loss that still touches every embedding (DDP-safe)
        return sum(e.sum() for e in embeddings.values()) * 0.0

    def step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        output = self(batch)
        if split == "train":
            loss = self.train_loss(output.embeddings, output.present)
        else:  # this rank's batch; the split-level retrieval below gathers every rank's embeddings
            loss = self._mean_loss(output.embeddings, output.present)
        size = self.batch_size_of(batch)
        self.log_batch_value(f"{split}/loss", loss, batch_size=size, on_step=split == "train", prog_bar=True)
        if split == "train":
            for name, module in self.losses.items():
                inner = module.loss if isinstance(module, MatryoshkaLoss) else module
                if hasattr(inner, "temperature"):
                    self.log(f"train/temperature_{name}", float(inner.temperature), on_step=False, on_epoch=True)
        else:
            self._collected[split].append(self._record(batch, output))
        return loss

    def _finish(self, split: str) -> None:
        result = self.finish_retrieval(split)
        self.results[split] = result
        # every rank computed the same values from the gathered set (log_split_results: logged as global)
        self.log_split_results(split, result, prog_bar=("r@1_mean",))
