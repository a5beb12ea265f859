"""``MultimodalModel``: encoders -> fusion -> head, built from a :class:`MultimodalConfig`.

Auxiliary heads (``aux_heads``: encoder slots): each listed slot also gets its own classifier (the ``head``
spec, on that encoder's pooled output), whose logits come back as ``aux_logits`` beside the fused ones;
``task.aux_weights`` weighs their losses (the seeds' ``lambda_video`` / ``lambda_audio``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


@dataclass
class MultimodalOutput(SequenceClassifierOutput):
    """``SequenceClassifierOutput`` plus ``aux_logits``: slot -> ``[B, C]`` of the auxiliary heads (or ``None``)."""

    aux_logits: dict[str, torch.Tensor] | None = None


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
        slots = list(getattr(config, "aux_heads", None) or [])
        unknown = sorted(set(slots) - set(self.encoders))
        if unknown:
            raise ValueError(f"model.aux_heads {unknown} name no encoder slot; the slots: {sorted(self.encoders)}.")
        self.aux_heads = nn.ModuleDict({slot: self.build_part("head", input_dim=self.encoder_dims[slot],
                                                              **self.head_arguments()) for slot in slots})
        self.finish_init()

    def head_arguments(self) -> dict[str, int]:
        """What the builder gives the head besides ``input_dim``: the class count (a kind with another
        output, e.g. regression's ``num_outputs``, overrides it)."""
        return {"num_labels": int(self.config.num_labels)}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss ``forward`` returns with ``labels``: cross-entropy."""
        return nn.functional.cross_entropy(logits, labels)

    def components(self) -> dict[str, nn.Module]:
        parts = {**super().components(), "fusion": self.fusion, "head": self.head}
        return {**parts, "aux_heads": self.aux_heads} if len(self.aux_heads) else parts

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        outputs = self.encode_checked(batch)
        fused = run_part("model.fusion", lambda: self.fusion(outputs))
        logits = run_part("model.head", lambda: self.head(fused))
        (name, width), = self.head_arguments().items()
        expected = (fused.pooled.shape[0], width)
        if tuple(logits.shape) != expected:
            raise ValueError(f"model.head returns {tuple(logits.shape)}, expected {expected} (batch, {name}).")

    def forward(self, labels: torch.Tensor | None = None, **batch: Any) -> MultimodalOutput:
        encoded = self.encode(**batch)
        logits = self.head(self.fusion(encoded))
        aux = {slot: head(encoded[slot]) for slot, head in self.aux_heads.items()} or None
        return MultimodalOutput(loss=self.loss(logits, labels) if labels is not None else None, logits=logits,
                                aux_logits=aux)


@injects(own=["id2label", "allowed_target_prefixes"], fusion=["input_dims"], head=["input_dim", "num_labels"])
def build_multimodal_model(
    *,
    encoders: Mapping[str, Any],
    fusion: Mapping[str, Any],
    head: Mapping[str, Any],
    id2label: Mapping[int, str],
    allowed_target_prefixes: Sequence[str],
    trainable: Mapping[str, bool] | None = None,
    aux_heads: Sequence[str] | None = None,
) -> MultimodalModel:
    """Build the model from its component specs (the ``model`` config node, not recursively built).

    Args:
        encoders: slot name (modality) -> encoder spec.
        fusion, head: specs; their input sizes and the class count are wired in by the model.
        id2label: class index -> name, from the data's label map.
        allowed_target_prefixes: import allowlist stored with the model.
        trainable: component -> whether it trains.
        aux_heads: encoder slots that also get their own classifier (auxiliary losses, ``task.aux_weights``).
    """
    return MultimodalModel(MultimodalConfig(**config_fields(
        encoders=encoders, fusion=fusion, head=head, id2label=id2label,
        allowed_target_prefixes=allowed_target_prefixes, trainable=trainable,
    ), aux_heads=[str(slot) for slot in (aux_heads or [])]))


KIND = register_model_kind(ModelKind(
    name="multimodal", config_class=MultimodalConfig, model_class=MultimodalModel, builder=build_multimodal_model,
    predict=predict_label, auto_classes=("AutoModel", "AutoModelForSequenceClassification"),
))
