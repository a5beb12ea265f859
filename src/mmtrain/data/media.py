"""Media decoding with PyAV (video frames, 16 kHz mono audio) and PIL (images).

Segment reads seek first and stop at the segment's end, so their cost follows the segment, not
the file: two seconds from the middle of a ten-minute video decode about as fast as from a
ten-second one. Every decoding failure (missing file, zero bytes, truncated or random data, no
stream of the kind asked for) raises :class:`MediaError`, which names the file and the modality.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

SAMPLING_RATE = 16000


class MediaError(ValueError):
    """A media file that cannot be decoded; ``path`` and ``modality`` say which and what."""

    def __init__(self, path: str | Path, modality: str, reason: str) -> None:
        self.path = str(path)
        self.modality = modality
        self.reason = reason
        super().__init__(f"{modality} {self.path}: {reason}")


def _open(path: str | Path, modality: str) -> av.container.InputContainer:
    file = Path(path)
    if not file.is_file():
        raise MediaError(file, modality, "file does not exist")
    if file.stat().st_size == 0:
        raise MediaError(file, modality, "file is empty (0 bytes)")
    try:
        return av.open(str(file))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise MediaError(file, modality, f"cannot open: {err}") from err


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def video_duration(path: str | Path) -> float:
    """Duration in seconds of the first video stream (container duration as a fallback)."""
    with _open(path, "video") as container:
        if not container.streams.video:
            raise MediaError(path, "video", "no video stream")
        stream = container.streams.video[0]
        seconds = _seconds(stream.duration, stream.time_base)
        if seconds is None and container.duration is not None:
            seconds = container.duration / av.time_base
        if seconds is None:
            raise MediaError(path, "video", "duration unknown")
        return seconds


def segment_times(start: float, end: float, count: int) -> np.ndarray:
    """``count`` timestamps spread uniformly over ``[start, end)`` (centres of equal bins)."""
    if end <= start:
        raise ValueError(f"segment end {end} must be after start {start}")
    return start + (np.arange(count) + 0.5) * (end - start) / count


def read_video_segment(
    path: str | Path, *, num_frames: int, start: float | None = None, end: float | None = None
) -> np.ndarray:
    """``num_frames`` frames shown at uniform times in ``[start, end)`` as ``uint8 [K,H,W,3]``.

    Seeks to the key frame before ``start`` and decodes only until the last wanted time. The frame
    for a time ``t`` is the one on screen at ``t`` (largest presentation time ``<= t``).

    Args:
        path: video file.
        num_frames: ``K``.
        start, end: segment in seconds; defaults to the whole stream.

    Raises:
        MediaError: the file cannot be decoded or has no frame in the segment.
    """
    with _open(path, "video") as container:
        if not container.streams.video:
            raise MediaError(path, "video", "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        begin = 0.0 if start is None else float(start)
        if end is None:
            total = _seconds(stream.duration, stream.time_base)
            if total is None and container.duration is not None:
                total = container.duration / av.time_base
            if total is None:
                raise MediaError(path, "video", "duration unknown; give the segment end")
            end = total
        targets = segment_times(begin, float(end), num_frames)
        return _frames_at(container, stream, targets, path)


def _frames_at(
    container: av.container.InputContainer, stream: av.VideoStream, targets: np.ndarray, path: str | Path
) -> np.ndarray:
    """``uint8 [K,H,W,3]``: the frame on screen at each target time, decoding forward from a seek.

    Only frames that are chosen are converted to RGB, each once, straight into the output array;
    no decoded frame is kept beyond the one before the current.
    """
    time_base = stream.time_base
    out: np.ndarray | None = None
    filled = 0
    previous: av.VideoFrame | None = None
    previous_rgb: np.ndarray | None = None

    def choose(frame: av.VideoFrame) -> None:
        nonlocal out, filled, previous_rgb
        if frame is not previous or previous_rgb is None:
            previous_rgb = frame.to_ndarray(format="rgb24")
        if out is None:
            out = np.empty((len(targets), *previous_rgb.shape), dtype=np.uint8)
        out[filled] = previous_rgb
        filled += 1

    try:
        if targets[0] > 0:
            container.seek(int(targets[0] / time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            shown_at = float(frame.pts * time_base)
            while filled < len(targets) and shown_at > targets[filled]:
                choose(previous if previous is not None else frame)
            if filled == len(targets):
                break
            if previous is not None and previous is not frame:
                previous_rgb = None
            previous = frame
    except (av.FFmpegError, OSError) as err:
        raise MediaError(path, "video", f"decoding failed: {err}") from err
    if previous is None:
        raise MediaError(path, "video", "no frame could be decoded in the segment")
    if filled < len(targets):
        # The segment runs past the last frame: hold it for at most two frame intervals (rounding
        # of the segment end); further than that the file is cut short.
        last_time = float(previous.pts * time_base)
        rate = float(stream.average_rate or 25)
        if targets[-1] - last_time > 2.0 / rate:
            raise MediaError(
                path, "video", f"the video ends at {last_time:.2f} s, before the segment's frame at {targets[-1]:.2f} s"
            )
        while filled < len(targets):
            choose(previous)
    assert out is not None
    return out


def read_audio_segment(path: str | Path, *, start: float | None = None, end: float | None = None) -> np.ndarray:
    """The first audio stream between ``start`` and ``end`` seconds as ``float32 [L]``, mono, 16 kHz.

    Raises:
        MediaError: the file cannot be decoded or has no audio in the segment.
    """
    begin = 0.0 if start is None else float(start)
    with _open(path, "audio") as container:
        if not container.streams.audio:
            raise MediaError(path, "audio", "no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLING_RATE)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        try:
            if begin > 0:
                container.seek(int(begin / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                frame_time = _seconds(frame.pts, frame.time_base)
                if end is not None and frame_time is not None and frame_time >= end:
                    break
                if first_time is None:
                    first_time = frame_time if frame_time is not None else begin
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except (av.FFmpegError, OSError) as err:
            raise MediaError(path, "audio", f"decoding failed: {err}") from err
    if not chunks:
        raise MediaError(path, "audio", "no audio could be decoded in the segment")
    wave = np.concatenate(chunks).astype(np.float32)
    offset = max(0, int(round((begin - (first_time or 0.0)) * SAMPLING_RATE)))
    stop = None if end is None else offset + int(round((float(end) - begin) * SAMPLING_RATE))
    segment = wave[offset:stop]
    if segment.size == 0:
        raise MediaError(path, "audio", f"no audio in the segment [{begin}, {end})")
    return segment


def read_video(path: str | Path, num_frames: int | None = None) -> np.ndarray:
    """Whole video: every frame, or ``num_frames`` spread uniformly, as ``uint8 [T,H,W,3]``."""
    if num_frames is not None:
        return read_video_segment(path, num_frames=num_frames)
    with _open(path, "video") as container:
        if not container.streams.video:
            raise MediaError(path, "video", "no video stream")
        try:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        except (av.FFmpegError, OSError) as err:
            raise MediaError(path, "video", f"decoding failed: {err}") from err
    if not frames:
        raise MediaError(path, "video", "no video frame could be decoded")
    return np.stack(frames)


def read_audio(path: str | Path) -> np.ndarray:
    """Whole first audio stream as ``float32 [L]``, mono, 16 kHz."""
    return read_audio_segment(path)


def read_image(source: str | Path | bytes) -> Image.Image:
    """An RGB PIL image from a file or encoded bytes, fully decoded (truncated files fail here)."""
    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)):
        file = Path(source)
        if not file.is_file():
            raise MediaError(file, "image", "file does not exist")
        source = file.read_bytes()
    if not source:
        raise MediaError(name, "image", "empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(source)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise MediaError(name, "image", f"cannot decode: {err}") from err
