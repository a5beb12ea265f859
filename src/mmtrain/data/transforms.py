"""Deterministic media -> tensor transforms (torch ops; no torchvision)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_float_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``uint8 [T,H,W,3]`` (or ``[H,W,3]``) -> ``float [T,3,H,W]`` in ``[0, 1]``."""
    array = np.asarray(frames)
    tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[-1] not in (1, 3):
        raise ValueError(f"expected frames shaped [T,H,W,3], got {tuple(tensor.shape)}")
    if tensor.shape[-1] == 1:
        tensor = tensor.expand(*tensor.shape[:-1], 3)
    return tensor.permute(0, 3, 1, 2).float().div_(255.0)


def pil_to_frames(image: Image.Image) -> torch.Tensor:
    """PIL image -> ``float [1,3,H,W]`` in ``[0, 1]``."""
    return to_float_frames(np.asarray(image.convert("RGB")))


def resize_normalize(
    frames: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Resize the shorter side to ``size``, centre-crop to ``size x size``, normalise.

    Args:
        frames: ``[T,3,H,W]`` in ``[0, 1]``.

    Returns:
        ``[T,3,size,size]``.
    """
    height, width = frames.shape[-2:]
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        frames = torch.nn.functional.interpolate(
            frames, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
    top, left = (new_h - size) // 2, (new_w - size) // 2
    frames = frames[..., top : top + size, left : left + size]
    mean_t = torch.tensor(mean, dtype=frames.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=frames.dtype).view(1, 3, 1, 1)
    return (frames - mean_t) / std_t


def uniform_indices(length: int, count: int) -> torch.Tensor:
    """``count`` frame indices spread uniformly over ``[0, length)`` (centres of equal bins)."""
    if length <= 0:
        raise ValueError("cannot sample frames from an empty clip")
    positions = (torch.arange(count, dtype=torch.float64) + 0.5) * length / count
    return positions.floor().long().clamp_(0, length - 1)
