"""A tiny real model for tests that need an export folder."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_export(folder: Path) -> Path:
    """``save_pretrained`` of a tiny audio-only classifier (config.json + model.safetensors + manifest.json)."""
    from mmtrain.models.multimodal import build_multimodal_model

    torch.manual_seed(0)
    model = build_multimodal_model(
        encoders={"audio": {"_target_": "mmtrain.components.encoders.audio_conv1d.AudioConv1DEncoder", "num_mel_bins": 8,
                            "hidden_dim": 8, "num_layers": 1}},
        fusion={"_target_": "mmtrain.components.fusion.concat.ConcatPoolFusion", "hidden_dim": 8},
        head={"_target_": "mmtrain.components.heads.classification.LinearClassifier"},
        id2label={0: "a", 1: "b"}, allowed_target_prefixes=["mmtrain."],
    )
    model.save_pretrained(folder)
    return folder
