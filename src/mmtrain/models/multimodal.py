"""``MultimodalModel``: encoders -> fusion -> head, built from a :class:`MultimodalConfig`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from mmtrain.config.validate import injects
from mmtrain.models.base import (  # noqa: F401  (MODALITY_INPUTS, modality_of re-exported)
    MODALITY_INPUTS,
    WEIGHTS_NAME,
    MultimodalPreTrainedModel,
    modality_of,
    run_part,
)
from mmtrain.models.configuration import MultimodalConfig
from mmtrain.models.registry import ModelKind, config_fields, predict_label, register_model_kind


class MultimodalModel(MultimodalPreTrainedModel):
    """A multimodal classifier assembled from component specs.

    Forward takes the processor's batch (any subset of ``pixel_values`` [B,C,H,W],
    ``pixel_values_videos`` [B,T,C,H,W], ``input_features`` [B,F,T] / ``input_values`` [B,L],
    ``input_ids`` [B,L] with their masks, and ``<modality>_present`` [B] bool) and returns
    ``logits`` [B, num_labels] (plus ``loss`` when ``labels`` [B] are given).
    """

    config_class = MultimodalConfig

    def __init__(self, config: MultimodalConfig) -> None:
        super().__init__(config)
        if not config.fusion or not config.head:
            raise ValueError(f"{type(config).__name__} needs 'encoders', 'fusion' and 'head' specs.")
        self.fusion = self.build_part("fusion", input_dims=self.encoder_dims)
        self.head = self.build_part("head", input_dim=int(self.fusion.output_dim), **self.head_arguments())
        self.finish_init()

    def head_arguments(self) -> dict[str, int]:
        """What the builder gives the head besides ``input_dim``: the class count (a kind with another
        output, e.g. regression's ``num_outputs``, overrides it)."""
        return {"num_labels": int(self.config.num_labels)}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss ``forward`` returns with ``labels``: cross-entropy."""
        return nn.functional.cross_entropy(logits, labels)

    def components(self) -> dict[str, nn.Module]:
        return {**super().components(), "fusion": self.fusion, "head": self.head}

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        outputs = self.encode_checked(batch)
        fused = run_part("model.fusion", lambda: self.fusion(outputs))
        logits = run_part("model.head", lambda: self.head(fused))
        (name, width), = self.head_arguments().items()
        expected = (fused.pooled.shape[0], width)
        if tuple(logits.shape) != expected:
            raise ValueError(f"model.head returns {tuple(logits.shape)}, expected {expected} (batch, {name}).")

    def forward(self, labels: torch.Tensor | None = None, **batch: Any) -> SequenceClassifierOutput:
        logits = self.head(self.fusion(self.encode(**batch)))
        return SequenceClassifierOutput(loss=self.loss(logits, labels) if labels is not None else None, logits=logits)


@injects(own=["id2label", "allowed_target_prefixes"], fusion=["input_dims"], head=["input_dim", "num_labels"])
def build_multimodal_model(
    *,
    encoders: Mapping[str, Any],
    fusion: Mapping[str, Any],
    head: Mapping[str, Any],
    id2label: Mapping[int, str],
    allowed_target_prefixes: Sequence[str],
    trainable: Mapping[str, bool] | None = None,
) -> MultimodalModel:
    """Build the model from its component specs (the ``model`` config node, not recursively built).

    Args:
        encoders: slot name (modality) -> encoder spec.
        fusion, head: specs; their input sizes and the class count are wired in by the model.
        id2label: class index -> name, from the data's label map.
        allowed_target_prefixes: import allowlist stored with the model.
        trainable: component -> whether it trains.
    """
    return MultimodalModel(MultimodalConfig(**config_fields(
        encoders=encoders, fusion=fusion, head=head, id2label=id2label,
        allowed_target_prefixes=allowed_target_prefixes, trainable=trainable,
    )))


KIND = register_model_kind(ModelKind(
    name="multimodal", config_class=MultimodalConfig, model_class=MultimodalModel, builder=build_multimodal_model,
    predict=predict_label, auto_classes=("AutoModel", "AutoModelForSequenceClassification"),
))
