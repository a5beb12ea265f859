"""``MultimodalModel``: encoders -> fusion -> head, built from a :class:`MultimodalConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from mmtrain.hf.base import (  # noqa: F401  (MODALITY_INPUTS, modality_of re-exported)
    MODALITY_INPUTS,
    WEIGHTS_NAME,
    MultimodalPreTrainedModel,
    modality_of,
    run_part,
)
from mmtrain.hf.configuration import MultimodalConfig


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
            raise ValueError("MultimodalConfig needs 'encoders', 'fusion' and 'head' specs.")
        self.fusion = self.build_part("fusion", input_dims=self.encoder_dims)
        self.head = self.build_part("head", input_dim=int(self.fusion.output_dim), num_labels=config.num_labels)
        self.finish_init()

    def components(self) -> dict[str, nn.Module]:
        return {**super().components(), "fusion": self.fusion, "head": self.head}

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        outputs = self.encode_checked(batch)
        fused = run_part("model.fusion", lambda: self.fusion(outputs))
        logits = run_part("model.head", lambda: self.head(fused))
        expected = (fused.pooled.shape[0], self.config.num_labels)
        if tuple(logits.shape) != expected:
            raise ValueError(f"model.head returns logits {tuple(logits.shape)}, expected {expected} (batch, classes).")

    def forward(self, labels: torch.Tensor | None = None, **batch: Any) -> SequenceClassifierOutput:
        fused = self.fusion(self.encode(**batch))
        logits = self.head(fused)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)
