"""Encoders: one modality in, ``EncoderOutput(tokens [B,N,D], mask [B,N], pooled [B,D])`` out.

Classes are imported lazily (``from mmtrain.encoders import HFImageEncoder`` works, but importing
this package does not import ``transformers``). YAML ``_target_`` paths name the defining module.
"""

from __future__ import annotations

import importlib
from typing import Any

from mmtrain.encoders.base import EncoderOutput, full_mask, masked_mean

_LAZY = {
    "HFTower": "mmtrain.encoders.hf_tower",
    "resolve_pretrained_path": "mmtrain.encoders.hf_tower",
    "HFImageEncoder": "mmtrain.encoders.hf_image",
    "HFAudioEncoder": "mmtrain.encoders.hf_audio",
    "HFTextEncoder": "mmtrain.encoders.hf_text",
    "LLMEmbeddingEncoder": "mmtrain.encoders.llm_embeddings",
    "Conv1DEncoder": "mmtrain.encoders.conv1d",
    "AudioConv1DEncoder": "mmtrain.encoders.audio_conv1d",
    "FrameEncoder": "mmtrain.encoders.video_frames",
    "VideoConv1DEncoder": "mmtrain.encoders.video_conv1d",
}

__all__ = ["EncoderOutput", "full_mask", "masked_mean", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
