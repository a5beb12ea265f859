"""Auxiliary per-modality terms of a task's objective (the seeds' ``lambda_video`` / ``lambda_audio`` /
``lambda_fusion``): ``fused_weight * loss(fused) + sum(aux_weights[slot] * loss(aux_slot))``.

Each auxiliary head (``model.aux_heads``) reads one encoder slot's pooled output; its term is the task's
loss over the samples that have that slot's modality, against the sample's own target for that modality
when the data gives one (``batch["aux_labels"]``: CH-SIMS's ``label_T`` / ``label_A`` / ``label_V``), else
the fused target. With auxiliary terms each is logged apart (``<split>/loss_fused``, ``<split>/loss_<slot>``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mmtrain.models.base import modality_of


class AuxiliaryTerms:
    """Mixin of a :class:`~mmtrain.engine.tasks.base.TaskBase` whose model may return ``aux_logits``."""

    def setup_aux(self, model: nn.Module, aux_weights: dict[str, float] | None, fused_weight: float) -> None:
        """Check ``aux_weights`` (slot -> weight) against the model's auxiliary heads."""
        self.aux_weights = {str(k): float(v) for k, v in (aux_weights or {}).items()}
        self.fused_weight = float(fused_weight)
        heads = set(getattr(model, "aux_heads", None) or {})
        missing = sorted(set(self.aux_weights) - heads)
        if missing:
            raise ValueError(f"task.aux_weights {missing}: the model has no auxiliary head for them; add the slots to "
                             f"model.aux_heads (it has {sorted(heads)}).")

    def with_aux_terms(self, loss: torch.Tensor, out: Any, batch: dict[str, Any], labels: torch.Tensor,
                       loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], split: str) -> torch.Tensor:
        """The objective from the fused ``loss``: unchanged without auxiliary weights, else the weighted sum
        (every term logged). ``labels``: the fused target ``[B]`` (classes) or ``[B, K]`` (values)."""
        if not self.aux_weights:
            return loss
        size = self.batch_size_of(batch)  # type: ignore[attr-defined]
        self.log_batch_value(f"{split}/loss_fused", loss, batch_size=size)  # type: ignore[attr-defined]
        total = self.fused_weight * loss
        own = batch.get("aux_labels") or {}
        for slot, weight in self.aux_weights.items():
            target = own.get(slot, own.get(modality_of(slot)))
            target = labels if target is None else target.to(labels.dtype).reshape(labels.shape)
            present = batch.get(f"{slot}_present", batch.get(f"{modality_of(slot)}_present"))
            present = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device) if present is None else present
            logits = out.aux_logits[slot]
            term = loss_fn(logits[present], target[present]) if bool(present.any()) else logits.sum() * 0.0
            self.log_batch_value(f"{split}/loss_{slot}", term, batch_size=size)  # type: ignore[attr-defined]
            total = total + weight * term
        return total
