"""Image and video-frame transforms: resize + centre crop + normalise, and train-time augmentation.

All torch ops (no torchvision). A clip's frames share one random draw, so augmentation never
makes frames of the same clip disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mmtrain.data.transforms import resize_normalize

AUGMENT_KEYS = {"random_resized_crop", "hflip", "color_jitter"}


def check_augment(augment: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate augmentation settings: ``random_resized_crop: [min_area, max_area]`` (fractions),
    ``hflip: p``, ``color_jitter: strength`` (brightness/contrast/saturation factor in ``1 +- s``)."""
    augment = dict(augment or {})
    unknown = sorted(set(augment) - AUGMENT_KEYS)
    if unknown:
        raise ValueError(f"data.processor.augment: unknown keys {unknown}; known: {sorted(AUGMENT_KEYS)}")
    crop = augment.get("random_resized_crop")
    if crop is not None and not (len(crop) == 2 and 0.0 < float(crop[0]) <= float(crop[1]) <= 1.0):
        raise ValueError(f"data.processor.augment.random_resized_crop must be [min, max] in (0, 1], got {crop}")
    for key in ("hflip", "color_jitter"):
        if key in augment and not 0.0 <= float(augment[key]) <= 1.0:
            raise ValueError(f"data.processor.augment.{key} must be in [0, 1], got {augment[key]}")
    return augment


def _random_crop_box(height: int, width: int, area: Sequence[float]) -> tuple[int, int, int, int]:
    """Top, left, crop height, crop width covering a random fraction of the area (aspect 3/4..4/3)."""
    for _ in range(10):
        fraction = float(torch.empty(1).uniform_(float(area[0]), float(area[1])))
        log_ratio = float(torch.empty(1).uniform_(-0.2877, 0.2877))  # log(3/4) .. log(4/3)
        ratio = torch.tensor(log_ratio).exp().item()
        crop_w = round((fraction * height * width * ratio) ** 0.5)
        crop_h = round((fraction * height * width / ratio) ** 0.5)
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (1,)))
            left = int(torch.randint(0, width - crop_w + 1, (1,)))
            return top, left, crop_h, crop_w
    return 0, 0, height, width


def _jitter(frames: torch.Tensor, strength: float) -> torch.Tensor:
    """Random brightness, contrast and saturation (one draw per clip) on ``[T,3,H,W]`` in [0, 1]."""
    factors = torch.empty(3).uniform_(1.0 - strength, 1.0 + strength)
    frames = frames * factors[0]
    mean = frames.mean(dim=(1, 2, 3), keepdim=True)
    frames = (frames - mean) * factors[1] + mean
    gray = (0.299 * frames[:, 0:1] + 0.587 * frames[:, 1:2] + 0.114 * frames[:, 2:3])
    frames = (frames - gray) * factors[2] + gray
    return frames.clamp(0.0, 1.0)


def visual_transform(
    frames: torch.Tensor,
    *,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    augment: Mapping[str, Any] | None = None,
) -> torch.Tensor:
    """``[T,3,H,W]`` in [0, 1] -> ``[T,3,size,size]`` normalised; augmented when ``augment`` is given."""
    if augment:
        crop = augment.get("random_resized_crop")
        if crop is not None:
            top, left, height, width = _random_crop_box(frames.shape[-2], frames.shape[-1], crop)
            frames = frames[..., top : top + height, left : left + width]
            frames = torch.nn.functional.interpolate(
                frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        if float(augment.get("hflip", 0.0)) > float(torch.rand(())):
            frames = frames.flip(-1)
        if float(augment.get("color_jitter", 0.0)) > 0.0:
            frames = _jitter(frames, float(augment["color_jitter"]))
    return resize_normalize(frames, size, mean, std)
