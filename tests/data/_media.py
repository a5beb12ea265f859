"""Real media files for the data tests: H.264/AAC mp4, wav, png/jpg, broken variants.

Video frame ``i`` is a flat grey frame of value ``frame_value(i)``, so a decoded frame tells which
source frame it is (:func:`frame_index`). The audio track is a sine tone of a known frequency.
"""

from __future__ import annotations

import io
import math
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

FPS = 10
SIZE = 32
TONE_HZ = 440.0


def frame_value(index: int) -> int:
    """Grey level of source frame ``index`` (distinct, far apart, inside the video range)."""
    return 20 + 9 * index


def frame_index(frame: np.ndarray) -> int:
    """Which source frame a decoded ``[H,W,3]`` frame is (inverse of :func:`frame_value`)."""
    return int(round((float(frame.mean()) - 20) / 9))


def write_mp4(
    path: Path, *, seconds: float = 2.0, fps: int = FPS, tone_hz: float = TONE_HZ, audio: bool = True,
    audio_rate: int = 22050,
) -> Path:
    """H.264 (libx264, near-lossless) video of flat frames + an AAC mono sine track."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = int(round(seconds * fps))
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "0", "preset": "ultrafast"}
        sound = container.add_stream("aac", rate=audio_rate, layout="mono") if audio else None
        for index in range(frames):
            image = np.full((SIZE, SIZE, 3), frame_value(index), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            total = int(round(seconds * audio_rate))
            t = np.arange(total) / audio_rate
            tone = (0.5 * np.sin(2 * math.pi * tone_hz * t)).astype(np.float32)
            for start in range(0, total, 1024):
                chunk = tone[start : start + 1024][None, :]
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate = audio_rate
                frame.pts = start
                frame.time_base = Fraction(1, audio_rate)
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path


def write_wav(path: Path, *, seconds: float = 1.0, rate: int = 8000, tone_hz: float = TONE_HZ) -> Path:
    """16-bit mono PCM wav of a sine tone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * rate))) / rate
    pcm = (0.5 * 32767 * np.sin(2 * math.pi * tone_hz * t)).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return path


def image_bytes(color: tuple[int, int, int], *, size: tuple[int, int] = (12, 10), fmt: str = "PNG") -> bytes:
    """An encoded flat image (``size`` is width x height)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def noise_png(seed: int, side: int = 96) -> bytes:
    """An incompressible PNG (random pixels), about ``side * side * 3`` bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def write_image(path: Path, color: tuple[int, int, int], *, size: tuple[int, int] = (12, 10)) -> Path:
    """A flat png or jpg (by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    path.write_bytes(image_bytes(color, size=size, fmt=fmt))
    return path


def truncate(source: Path, target: Path, keep: float = 0.3) -> Path:
    """``target`` = the first ``keep`` fraction of ``source``'s bytes."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def random_bytes(target: Path, size: int = 4096, seed: int = 0) -> Path:
    target.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return target


def dominant_hz(wave_16k: np.ndarray, rate: int = 16000) -> float:
    """Frequency of the strongest FFT bin."""
    spectrum = np.abs(np.fft.rfft(wave_16k * np.hanning(len(wave_16k))))
    return float(np.fft.rfftfreq(len(wave_16k), 1 / rate)[int(np.argmax(spectrum))])


def assert_skip(result: object, file: Path | str, modality: str) -> None:
    """``result`` is a SkippedSample naming ``file`` and ``modality`` (never an empty sample)."""
    from mmtrain.data.skips import SkippedSample

    assert isinstance(result, SkippedSample), f"expected a SkippedSample, got {type(result).__name__}: {result!r}"
    assert str(file) in result.file, (result.file, file)
    assert result.modality == modality
    assert result.error and result.id


def copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    return target


def noisy_colour_png(path: Path, colour: tuple[int, int, int], rng: np.random.Generator, side: int = 16) -> Path:
    """A ``side`` x ``side`` PNG of ``colour`` with +-20 of per-pixel noise (learnable colour stills)."""
    pixels = np.clip(np.array(colour) + rng.integers(-20, 20, size=(side, side, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path
