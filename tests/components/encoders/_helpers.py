"""Shared helpers for the encoder tests: build shipped encoder YAMLs, make tiny padded inputs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import hydra.utils
import torch
from omegaconf import OmegaConf
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput

# What the data processor would provide; the YAMLs interpolate these.
PROCESSOR = {"image_size": 16, "num_mel_bins": 80, "audio_frames": 100}
ATOL = 1e-5


def encoder_config_dir() -> Path:
    return Path(str(resources.files("mmtrain.configs") / "model" / "encoders"))


def encoder_yamls() -> list[str]:
    """Every shipped encoder YAML as ``"<modality>/<name>"``."""
    root = encoder_config_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.yaml"))


def resolved_node(name: str) -> dict[str, Any]:
    """The YAML ``<modality>/<name>`` with ``${data.processor.*}`` resolved, as a plain dict."""
    raw = OmegaConf.load(encoder_config_dir() / f"{name}.yaml")
    root = OmegaConf.create({"data": {"processor": PROCESSOR}, "encoder": raw})
    return OmegaConf.to_container(root.encoder, resolve=True)  # type: ignore[return-value]


def build(name: str, **overrides: Any) -> nn.Module:
    """Instantiate a shipped encoder YAML; ``overrides`` replace top-level arguments wholesale."""
    node = resolved_node(name)
    node.update(overrides)
    return hydra.utils.instantiate(node)


@dataclass
class PaddingCase:
    """A batch, the same batch with extra (garbage) padding, and the real-token mask of the first."""

    inputs: dict[str, torch.Tensor]
    padded: dict[str, torch.Tensor] | None  # None: the architecture has no padding to add


def make_case(name: str, seed: int = 0) -> PaddingCase:
    """Tiny inputs for encoder YAML ``name`` (batch 2; sample 1 already partly padded)."""
    g = torch.Generator().manual_seed(seed)
    modality, variant = name.split("/")
    size = PROCESSOR["image_size"]
    if modality == "image":
        return PaddingCase({"pixel_values": torch.randn(2, 3, size, size, generator=g)}, None)
    if modality == "video":
        video = torch.randn(2, 5, 3, size, size, generator=g)
        mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
        return PaddingCase(
            {"pixel_values_videos": video[:, :3], "video_attention_mask": mask[:, :3]},
            {"pixel_values_videos": video, "video_attention_mask": mask},
        )
    if modality == "text":
        ids = torch.randint(1, 1000, (2, 10), generator=g)
        mask = torch.tensor([[1] * 7 + [0] * 3, [1] * 4 + [0] * 6])
        return PaddingCase(
            {"input_ids": ids[:, :7], "attention_mask": mask[:, :7]},
            {"input_ids": ids, "attention_mask": mask},
        )
    if variant in ("hubert", "wav2vec2"):
        wave = torch.randn(2, 2400, generator=g)
        mask = torch.zeros(2, 2400, dtype=torch.long)
        mask[0, :1600] = 1
        mask[1, :1000] = 1
        return PaddingCase(
            {"input_values": wave[:, :1600], "audio_attention_mask": mask[:, :1600]},
            {"input_values": wave, "audio_attention_mask": mask},
        )
    frames = PROCESSOR["audio_frames"]
    mel = torch.randn(2, PROCESSOR["num_mel_bins"], frames + 20, generator=g)
    mask = torch.zeros(2, frames + 20, dtype=torch.long)
    mask[0, :frames] = 1
    mask[1, :60] = 1
    base = {"input_features": mel[..., :frames], "audio_attention_mask": mask[:, :frames]}
    if variant == "whisper":  # fixed window: no extra padding possible
        return PaddingCase(base, None)
    return PaddingCase(base, {"input_features": mel, "audio_attention_mask": mask})


def assert_valid_output(out: EncoderOutput, batch: int, dim: int) -> None:
    """Shapes, dtypes and finiteness of an ``EncoderOutput``."""
    assert out.tokens.dim() == 3 and out.tokens.shape[0] == batch and out.tokens.shape[2] == dim
    assert out.mask.shape == out.tokens.shape[:2] and out.mask.dtype == torch.bool
    assert out.pooled.shape == (batch, dim)
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()


def random_loss(out: EncoderOutput, seed: int = 1) -> torch.Tensor:
    """A loss touching every real token and the pooled vector through random weights.

    (A plain sum would give zero gradients through LayerNorm outputs.)
    """
    g = torch.Generator().manual_seed(seed)
    w_tokens = torch.randn(out.tokens.shape, generator=g)
    w_pooled = torch.randn(out.pooled.shape, generator=g)
    real = out.mask.unsqueeze(-1).to(out.tokens.dtype)
    return (out.tokens * w_tokens * real).sum() + (out.pooled * w_pooled).sum()


def params_without_gradient(module: nn.Module, allowed: Iterable[str] = ()) -> list[str]:
    """Trainable parameters whose gradient is missing, non-finite or all zero (minus ``allowed``)."""
    allowed = tuple(allowed)
    bad = []
    for name, param in module.named_parameters():
        if not param.requires_grad or any(a in name for a in allowed):
            continue
        grad = param.grad
        if grad is None or not torch.isfinite(grad).all() or not grad.abs().sum() > 0:
            bad.append(name)
    return bad
