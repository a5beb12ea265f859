"""Whole-file media decoding with PyAV (frames, 16 kHz mono audio) and PIL (images)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

SAMPLING_RATE = 16000


def _open(path: str | Path) -> av.container.InputContainer:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"media file {file} does not exist")
    try:
        return av.open(str(file))
    except av.FFmpegError as err:
        raise ValueError(f"cannot open media file {file}: {err}") from err


def read_video(path: str | Path, num_frames: int | None = None) -> np.ndarray:
    """All frames (or ``num_frames`` spread uniformly) as ``uint8 [T,H,W,3]``."""
    with _open(path) as container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path}: no video frame could be decoded")
    clip = np.stack(frames)
    if num_frames is not None and num_frames != len(clip):
        positions = ((np.arange(num_frames) + 0.5) * len(clip) / num_frames).astype(int)
        clip = clip[np.clip(positions, 0, len(clip) - 1)]
    return clip


def read_audio(path: str | Path) -> np.ndarray:
    """The first audio stream as ``float32 [L]``, mono, 16 kHz."""
    with _open(path) as container:
        if not container.streams.audio:
            raise ValueError(f"{path} has no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLING_RATE)
        chunks = []
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise ValueError(f"{path}: no audio could be decoded")
    return np.concatenate(chunks).astype(np.float32)


def read_image(path: str | Path) -> Image.Image:
    """An RGB PIL image."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"image file {file} does not exist")
    try:
        with Image.open(file) as image:
            return image.convert("RGB")
    except OSError as err:
        raise ValueError(f"cannot decode image {file}: {err}") from err
