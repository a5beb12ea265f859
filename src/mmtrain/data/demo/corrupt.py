"""Segment media with optional corruption: frames, audio and text of one one-second segment.

A corrupted modality stops telling the true digit: video shows noise, flat frames or another digit
at low contrast under noise; audio carries noise, silence or another digit at low volume under
noise; text names another digit or is empty. At most two modalities of a segment are corrupted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmtrain.data.demo.images import render_digit
from mmtrain.data.demo.spec import MODALITIES, TEXT_TEMPLATES, WORDS, CorruptionConfig, MediaFormat


def _choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = sorted(weights)
    probs = np.array([weights[name] for name in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=probs / probs.sum()))]


def draw_corruption(rng: np.random.Generator, config: CorruptionConfig) -> dict[str, str]:
    """``{modality: kind}`` for the corrupted modalities of one segment (never all three)."""
    draws = rng.random(len(MODALITIES))
    chosen = [m for m, u in zip(MODALITIES, draws) if u < getattr(config, m)]
    spare = int(rng.integers(len(MODALITIES)))
    if len(chosen) == len(MODALITIES):
        chosen.pop(spare)
    return {m: _choose(rng, getattr(config, f"{m}_kinds")) for m in chosen}


def other_digit(rng: np.random.Generator, label: int) -> int:
    """A digit different from ``label``, uniformly."""
    return int((label + 1 + rng.integers(9)) % 10)


@dataclass(frozen=True)
class ClipStyle:
    """Look and sound shared by a clip's segments."""

    ink: tuple[float, float, float]  # RGB of the digit, [0,1]
    background: float  # grey level behind it
    noise_floor: float  # RMS of the audio background noise

    @classmethod
    def draw(cls, rng: np.random.Generator) -> ClipStyle:
        ink = tuple(float(c) for c in rng.uniform(0.7, 1.0, size=3))
        return cls(ink=ink, background=float(rng.uniform(0.0, 0.12)), noise_floor=float(rng.uniform(0.002, 0.008)))


def video_segment(
    pixels: np.ndarray, decoy: np.ndarray, kind: str | None, style: ClipStyle, rng: np.random.Generator,
    media: MediaFormat,
) -> np.ndarray:
    """Frames of one segment, uint8 [F,H,W,3]: the digit ``pixels`` (8x8) with per-frame jitter
    (1-pixel shifts, brightness), or the corruption ``kind`` (``decoy`` shows ``decoy``)."""
    size, count = media.frame_size, media.frames_per_segment
    contrast = float(rng.uniform(0.15, 0.3))
    grey = float(rng.uniform(0.2, 0.6))
    frames = np.empty((count, size, size, 3), np.uint8)
    ink = np.asarray(style.ink, np.float32)
    for index in range(count):
        shift = (int(rng.integers(-1, 2)), int(rng.integers(-1, 2)))
        if kind is None:
            canvas = render_digit(pixels, frame=size, box=media.digit_size, shift=shift) * rng.uniform(0.85, 1.0)
        elif kind == "decoy":
            canvas = render_digit(decoy, frame=size, box=media.digit_size, shift=shift) * contrast
            canvas = canvas + rng.normal(0.0, 0.12, (size, size))
        elif kind == "noise":
            canvas = rng.uniform(0.0, 1.0, (size, size))
        elif kind == "blank":
            canvas = np.full((size, size), grey)
        else:
            raise ValueError(f"unknown video corruption {kind!r}")
        rgb = style.background + canvas[..., None].astype(np.float32) * (ink - style.background)
        rgb = rgb + rng.normal(0.0, 0.015, rgb.shape)
        frames[index] = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    return frames


def _noise(rng: np.random.Generator, length: int, rms: float) -> np.ndarray:
    """White or brown (integrated) noise with the given RMS."""
    white = rng.normal(0.0, 1.0, length)
    if rng.random() < 0.5:
        white = np.cumsum(white)
        white -= np.linspace(white[0], white[-1], length)  # no drift
    return (white * rms / max(float(np.sqrt((white**2).mean())), 1e-9)).astype(np.float32)


def audio_segment(
    speech: np.ndarray, decoy: np.ndarray, kind: str | None, style: ClipStyle, rng: np.random.Generator,
) -> np.ndarray:
    """Audio of one segment, float32 [L]: ``speech`` (already placed in the segment) over the clip's
    noise floor, or the corruption ``kind`` (``decoy`` speaks ``decoy`` quietly under noise)."""
    length = len(speech)
    floor = rng.normal(0.0, style.noise_floor, length).astype(np.float32)
    if kind is None:
        out = speech + floor
    elif kind == "noise":
        out = _noise(rng, length, float(rng.uniform(0.05, 0.2)))
    elif kind == "silence":
        out = floor * 0.25
    elif kind == "decoy":
        out = decoy * float(rng.uniform(0.15, 0.3)) + _noise(rng, length, float(rng.uniform(0.04, 0.08)))
    else:
        raise ValueError(f"unknown audio corruption {kind!r}")
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def text_segment(label: int, decoy: int, kind: str | None, rng: np.random.Generator) -> str:
    """The segment's text: the digit word in a template, another digit's word, or empty."""
    template = TEXT_TEMPLATES[int(rng.integers(len(TEXT_TEMPLATES)))]
    if kind is None:
        return template.format(w=WORDS[label])
    if kind == "swap":
        return template.format(w=WORDS[decoy])
    if kind == "empty":
        return ""
    raise ValueError(f"unknown text corruption {kind!r}")
