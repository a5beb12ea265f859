"""``PairwiseModel``: compares two items (First / Second / Similar) with shared encoders and fusion.

Every modality input carries an item axis, ``[B, K, ...]`` with K = 2 (the processor makes it from
samples whose modality value is a list of two items, e.g. ``ImagePairDataset``'s image pairs). The
items are flattened to ``B*K`` virtual samples, encoded and fused per item (one set of weights for
both items), pooled to item vectors ``[B, K, D]`` and compared by the head: ``head(u, v)`` ->
logits ``[B, 3]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from mmtrain.config.validate import injects
from mmtrain.models.base import MultimodalPreTrainedModel, flatten_item_inputs, run_part
from mmtrain.models.configuration import MultimodalConfig
from mmtrain.models.registry import ModelKind, config_fields, predict_label, register_model_kind

ITEMS = 2


class PairwiseConfig(MultimodalConfig):
    """Specs of a pairwise comparator: ``encoders``, ``fusion`` (per item) and a pair ``head``.

    ``id2label`` comes from the data (``First``, ``Second``, ``Similar``); the head spec gets
    ``input_dim`` (the fusion's ``output_dim``) and ``num_labels`` from the model.
    """

    model_type = "mmtrain_pairwise"


class PairwiseModel(MultimodalPreTrainedModel):
    """Encoders -> fusion on each item of a pair -> ``head(u, v)``.

    Forward takes the processor's batch with the item axis (``pixel_values`` [B,2,C,H,W],
    ``input_ids`` [B,2,L], ... and ``<modality>_present`` [B]) and returns ``logits`` [B, num_labels]
    (plus ``loss`` when ``labels`` [B] are given).
    """

    config_class = PairwiseConfig

    def __init__(self, config: PairwiseConfig) -> None:
        super().__init__(config)
        if not config.fusion or not config.head:
            raise ValueError("PairwiseConfig needs 'encoders', 'fusion' and 'head' specs.")
        self.fusion = self.build_part("fusion", input_dims=self.encoder_dims)
        self.head = self.build_part("head", input_dim=int(self.fusion.output_dim), num_labels=config.num_labels)
        self.finish_init()

    def components(self) -> dict[str, nn.Module]:
        return {**super().components(), "fusion": self.fusion, "head": self.head}

    def flatten_items(self, batch: Mapping[str, Any]) -> tuple[dict[str, Any], int, int]:
        """:func:`flatten_item_inputs` for this model's encoders, with K checked to be 2.

        Raises:
            ValueError: single items given to a pairwise model, or K is not 2.
        """
        flat, b, k = flatten_item_inputs(batch, self.encoders, kind="the pairwise model (model=pairwise)",
                                         hint=f"Use pair data (each sample's modality value a list of {ITEMS} items, "
                                              "e.g. ImagePairDataset) or a classifier (model=multimodal).")
        if k != ITEMS:
            raise ValueError(f"the pairwise model compares {ITEMS} items a sample, got K={k} (inputs [B, K, ...]).")
        return flat, b, k

    def item_vectors(self, **batch: Any) -> torch.Tensor:
        """Pooled fused vector of every item: [B, K, D]."""
        flat, b, k = self.flatten_items(batch)
        pooled = self.fusion(self.encode(**flat)).pooled
        return pooled.reshape(b, k, -1)

    def compare_both_orders(self, **batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits for ``(a, b)`` and for the reversed pair ``(b, a)``, [B, C] each, from ONE encoding pass."""
        items = self.item_vectors(**batch)
        u, v = items[:, 0], items[:, 1]
        return self.head(u, v), self.head(v, u)

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        flat, b, k = self.flatten_items(batch)
        outputs = self.encode_checked(flat)
        fused = run_part("model.fusion", lambda: self.fusion(outputs))
        pooled = fused.pooled
        if pooled.dim() != 2 or pooled.shape[0] != b * k:
            raise ValueError(f"model.fusion returns pooled {tuple(pooled.shape)}, expected [{b * k}, D] (B*K items).")
        items = pooled.reshape(b, k, -1)
        logits = run_part("model.head", lambda: self.head(items[:, 0], items[:, 1]))
        expected = (b, self.config.num_labels)
        if tuple(logits.shape) != expected:
            raise ValueError(f"model.head returns logits {tuple(logits.shape)}, expected {expected} (pairs, classes).")

    def forward(self, labels: torch.Tensor | None = None, **batch: Any) -> SequenceClassifierOutput:
        items = self.item_vectors(**batch)
        logits = self.head(items[:, 0], items[:, 1])
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


__all__ = ["PairwiseConfig", "PairwiseModel"]


@injects(own=["id2label", "allowed_target_prefixes"], fusion=["input_dims"], head=["input_dim", "num_labels"])
def build_pairwise_model(
    *,
    encoders: Mapping[str, Any],
    fusion: Mapping[str, Any],
    head: Mapping[str, Any],
    id2label: Mapping[int, str],
    allowed_target_prefixes: Sequence[str],
    trainable: Mapping[str, bool] | None = None,
) -> PairwiseModel:
    """Build a pairwise comparator (First / Second / Similar) from its component specs.

    Args: as :func:`build_multimodal_model`; ``fusion`` runs on each item of a pair, ``head``
    (e.g. ``PairComparisonHead``) compares the two fused item vectors.
    """
    return PairwiseModel(PairwiseConfig(**config_fields(
        encoders=encoders, fusion=fusion, head=head, id2label=id2label,
        allowed_target_prefixes=allowed_target_prefixes, trainable=trainable,
    )))


KIND = register_model_kind(ModelKind(
    name="pairwise", config_class=PairwiseConfig, model_class=PairwiseModel, builder=build_pairwise_model,
    predict=predict_label, auto_classes=("AutoModel", "AutoModelForSequenceClassification"), item_pairs=True,
))
