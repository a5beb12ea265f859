"""Encoders: one modality in, ``EncoderOutput(tokens [B,N,D], mask [B,N], pooled [B,D])`` out.

Classes are imported lazily (``from mmtrain.components.encoders import HFImageEncoder`` works, but importing
this package does not import ``transformers``). YAML ``_target_`` paths name the defining module.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmtrain.components.encoders.base import EncoderOutput, full_mask, masked_mean

_LAZY = {
    "HFTower": "mmtrain.components.encoders.hf_tower",
    "resolve_pretrained_path": "mmtrain.components.encoders.hf_tower",
    "HFImageEncoder": "mmtrain.components.encoders.hf_image",
    "HFAudioEncoder": "mmtrain.components.encoders.hf_audio",
    "HFTextEncoder": "mmtrain.components.encoders.hf_text",
    "LLMEmbeddingEncoder": "mmtrain.components.encoders.llm_embeddings",
    "Conv1DEncoder": "mmtrain.components.encoders.conv1d",
    "AudioConv1DEncoder": "mmtrain.components.encoders.audio_conv1d",
    "FrameEncoder": "mmtrain.components.encoders.video_frames",
    "VideoConv1DEncoder": "mmtrain.components.encoders.video_conv1d",
}

__all__ = ["EncoderOutput", "full_mask", "masked_mean", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
