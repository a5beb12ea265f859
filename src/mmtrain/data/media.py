"""Media decoding with PyAV (video frames, 16 kHz mono audio); images: :mod:`mmtrain.data.images`.

Segment reads seek first and stop at the segment's end, so their cost follows the segment, not
the file: two seconds from the middle of a ten-minute video decode about as fast as from a
ten-second one. Every decoding failure (missing file, zero bytes, truncated or random data, no
stream of the kind asked for) raises :class:`MediaError`, which names the file and the modality.

Per-sample costs kept low (a DataLoader worker decodes many short segments):

- the video and the audio of one file can share one opened container (:class:`MediaFile`); each
  read seeks on its own, so the result is the same as with two separate opens;
- one RGB converter (swscale context) per read, single-threaded, instead of a new one (with its
  own thread pool) per frame; the pixels are the same;
- codec threads only for large frames outside DataLoader workers (:func:`decoder_threads`);
- audio that already is mono float 16 kHz is taken as decoded, without a resampler (the
  resampler would only copy it, bit for bit).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from mmtrain.data.media_limits import fit_pixels, segment_problem

SAMPLING_RATE = 16000


#: How encoded bytes (not a file) are named in a :class:`MediaError`; the skip ledger adds the sample's id.
BYTES_NAME = "<bytes>"


class MediaError(ValueError):
    """A media file that cannot be decoded; ``path`` and ``modality`` say which and what."""

    def __init__(self, path: str | Path, modality: str, reason: str) -> None:
        self.path = str(path)
        self.modality = modality
        self.reason = reason
        super().__init__(f"{modality} {self.path}: {reason}")


def _open(path: str | Path | bytes, modality: str) -> av.container.InputContainer:
    if isinstance(path, (bytes, bytearray)):  # a media column's encoded bytes (datasets, packed shards)
        if not path:
            raise MediaError(BYTES_NAME, modality, "empty (0 bytes)")
        try:
            return av.open(io.BytesIO(path))
        except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
            raise MediaError(BYTES_NAME, modality, f"cannot open: {err}") from err
    file = Path(path)
    if not file.is_file():
        raise MediaError(file, modality, "file does not exist")
    if file.stat().st_size == 0:
        raise MediaError(file, modality, "file is empty (0 bytes)")
    try:
        return av.open(str(file))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        raise MediaError(file, modality, f"cannot open: {err}") from err


class MediaFile:
    """One media file whose container is opened on first use and shared by the reads given it.

    Pass it instead of a path to :func:`read_video_segment` / :func:`read_audio_segment` to read
    the video and the audio of a file with one ``av.open``. The arrays equal those of separate
    reads: a read on a container another read has used always seeks first (to the segment, or
    back to the first packet when it reads from the start), and sharing is limited to MP4/MOV,
    whose demuxer seeks by a complete index read at open (so a seek lands where it would in a
    freshly opened file, and seeking before the first packet lands on it, audio priming
    included). Other formats get a fresh container per read, as with paths. An open failure is a
    :class:`MediaError` naming the modality of the read that opened it. Close it (or use
    ``with``) when done.
    """

    SHARED_FORMATS = frozenset({"mov", "mp4", "m4a", "3gp", "3g2", "mj2"})

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self._container: av.container.InputContainer | None = None
        self._used = False

    def _take(self, modality: str) -> tuple[av.container.InputContainer, bool] | None:
        """``(container, used before)`` for a read, or ``None``: open a container of its own."""
        if self._container is None:
            self._container = _open(self.path, modality)
        elif not self.SHARED_FORMATS.intersection(self._container.format.name.split(",")):
            return None
        used, self._used = self._used, True
        return self._container, used

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> MediaFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MediaFile({str(self.path)!r})"


# Seeking a stream to this timestamp, backward, lands on its first packet (MP4/MOV).
_BEFORE_START = -(2**62)


@contextmanager
def _container(
    source: str | Path | bytes | MediaFile, modality: str
) -> Iterator[tuple[av.container.InputContainer, str | Path, bool]]:
    """``(container, path, rewind)`` for one read of ``source``: a shared container (left open;
    ``rewind`` when another read used it, so a read from the start must seek back to the first
    packet) or one opened for this read and closed after it."""
    if isinstance(source, MediaFile):
        taken = source._take(modality)
        if taken is not None:
            yield taken[0], source.path, taken[1]
            return
        source = source.path
    with _open(source, modality) as container:
        yield container, BYTES_NAME if isinstance(source, (bytes, bytearray)) else source, False


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    # Integer true division is correctly rounded, so this equals float(value * time_base)
    # without building Fractions (it runs once per decoded frame).
    return value * time_base.numerator / time_base.denominator


# Codec threads pay off only for frames this large (width x height), and only outside DataLoader
# workers: there the workers already keep the cores busy, and starting a thread pool per opened
# file costs more than it saves on small frames (32x32: 0.7 ms of CPU per open).
THREADED_DECODE_PIXELS = 640 * 480


def decoder_threads(width: int, height: int) -> str:
    """The codec ``thread_type`` for a video stream: ``"AUTO"`` or ``"NONE"`` (see above)."""
    if width * height < THREADED_DECODE_PIXELS:
        return "NONE"
    from torch.utils.data import get_worker_info

    return "NONE" if get_worker_info() is not None else "AUTO"


def video_duration(path: str | Path) -> float:
    """Duration in seconds of the first video stream (container duration as a fallback)."""
    with _open(path, "video") as container:
        if not container.streams.video:
            raise MediaError(path, "video", "no video stream")
        seconds = _stream_seconds(container, container.streams.video[0])
        if seconds is None:
            raise MediaError(path, "video", "duration unknown")
        return seconds


def segment_times(start: float, end: float, count: int) -> np.ndarray:
    """``count`` timestamps spread uniformly over ``[start, end)`` (centres of equal bins)."""
    if end <= start:
        raise ValueError(f"segment end {end} must be after start {start}")
    return start + (np.arange(count) + 0.5) * (end - start) / count


def _stream_seconds(container: av.container.InputContainer, stream: Any) -> float | None:
    """Duration of ``stream`` in seconds (the container's as a fallback; ``None`` when unknown)."""
    total = _seconds(stream.duration, stream.time_base)
    if total is None and container.duration is not None:
        total = container.duration / av.time_base
    return total


def read_video_segment(
    path: str | Path | bytes | MediaFile, *, num_frames: int, start: float | None = None, end: float | None = None
) -> np.ndarray:
    """``num_frames`` frames shown at uniform times in ``[start, end)`` as ``uint8 [K,H,W,3]``.

    Seeks to the key frame before ``start`` and decodes only until the last wanted time. The frame
    for a time ``t`` is the one on screen at ``t`` (largest presentation time ``<= t``).

    Args:
        path: video file, its encoded bytes, or a shared :class:`MediaFile`.
        num_frames: ``K``.
        start, end: segment in seconds; defaults to the whole stream.

    Raises:
        MediaError: the file cannot be decoded or has no frame in the segment.
    """
    with _container(path, "video") as (container, path, rewind):
        if not container.streams.video:
            raise MediaError(path, "video", "no video stream")
        stream = container.streams.video[0]
        if not stream.codec_context.is_open:
            stream.thread_type = decoder_threads(stream.codec_context.width, stream.codec_context.height)
        begin = 0.0 if start is None else float(start)
        total = _stream_seconds(container, stream)
        if reason := segment_problem("video", begin, None if end is None else float(end), total):
            raise MediaError(path, "video", reason)  # the sample is skipped with it
        if end is None:
            if total is None:
                raise MediaError(path, "video", "duration unknown; give the segment end")
            end = total
        targets = segment_times(begin, float(end), num_frames)
        return _frames_at(container, stream, targets, path, rewind=rewind)


def _frames_at(
    container: av.container.InputContainer, stream: av.VideoStream, targets: np.ndarray, path: str | Path,
    rewind: bool = False,
) -> np.ndarray:
    """``uint8 [K,H,W,3]``: the frame on screen at each target time, decoding forward from a seek.

    Only frames that are chosen are converted to RGB, each once, straight into the output array;
    no decoded frame is kept beyond the one before the current. One converter serves all frames
    (``VideoFrame.to_ndarray(format=...)`` would build a new swscale context, and thread pool,
    per frame), single-threaded; the pixels are the same as ``to_ndarray(format="rgb24")``'s.
    """
    time_base = stream.time_base
    tb_num, tb_den = time_base.numerator, time_base.denominator
    converter = VideoReformatter()
    size: tuple[int | None, int | None] | None = None  # decided on the first chosen frame
    out: np.ndarray | None = None
    filled = 0
    previous: av.VideoFrame | None = None
    previous_rgb: np.ndarray | None = None

    def choose(frame: av.VideoFrame) -> None:
        nonlocal out, filled, previous_rgb, size
        if size is None:
            size = fit_pixels(frame.width, frame.height)
        if frame is not previous or previous_rgb is None:
            previous_rgb = converter.reformat(frame, format="rgb24", width=size[0], height=size[1],
                                              threads=1).to_ndarray()
        if out is None:
            out = np.empty((len(targets), *previous_rgb.shape), dtype=np.uint8)
        out[filled] = previous_rgb
        filled += 1

    try:
        if targets[0] > 0:
            container.seek(int(targets[0] / time_base), stream=stream, backward=True, any_frame=False)
        elif rewind:  # a shared container another read has moved: back to the first packet
            container.seek(_BEFORE_START, stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            shown_at = frame.pts * tb_num / tb_den  # == float(frame.pts * time_base), no Fraction
            while filled < len(targets) and shown_at > targets[filled]:
                choose(previous if previous is not None else frame)
            if filled == len(targets):
                break
            if previous is not None and previous is not frame:
                previous_rgb = None
            previous = frame
    except (av.FFmpegError, OSError, OverflowError) as err:
        raise MediaError(path, "video", f"decoding failed: {err}") from err
    if previous is None:
        raise MediaError(path, "video", "no frame could be decoded in the segment")
    if filled < len(targets):
        # The segment runs past the last frame: hold it for at most two frame intervals (rounding
        # of the segment end); further than that the file is cut short.
        last_time = previous.pts * tb_num / tb_den
        rate = float(stream.average_rate or 25)
        if targets[-1] - last_time > 2.0 / rate:
            raise MediaError(
                path, "video", f"the video ends at {last_time:.2f} s, before the segment's frame at {targets[-1]:.2f} s"
            )
        while filled < len(targets):
            choose(previous)
    assert out is not None
    return out


def _is_target_audio(frame: av.AudioFrame) -> bool:
    """Already mono float32 at 16 kHz: the resampler would only copy the samples (for one
    channel, planar ``fltp`` and packed ``flt`` hold the same bytes)."""
    return (
        frame.sample_rate == SAMPLING_RATE
        and frame.format.name in ("flt", "fltp")
        and frame.layout.name == "mono"
    )


def read_audio_segment(
    path: str | Path | bytes | MediaFile, *, start: float | None = None, end: float | None = None
) -> np.ndarray:
    """The first audio stream between ``start`` and ``end`` seconds as ``float32 [L]``, mono, 16 kHz.

    Streams that already are mono float 16 kHz skip the resampler (same samples, bit for bit);
    any other is converted by one ``av.AudioResampler`` over the segment's frames.

    Raises:
        MediaError: the file cannot be decoded or has no audio in the segment.
    """
    begin = 0.0 if start is None else float(start)
    with _container(path, "audio") as (container, path, rewind):
        if not container.streams.audio:
            raise MediaError(path, "audio", "no audio stream")
        stream = container.streams.audio[0]
        if reason := segment_problem("audio", begin, None if end is None else float(end),
                                     _stream_seconds(container, stream)):
            raise MediaError(path, "audio", reason)
        resampler: av.AudioResampler | None = None
        direct: bool | None = None  # decided on the first frame
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        try:
            if begin > 0:
                container.seek(int(begin / stream.time_base), stream=stream, backward=True, any_frame=False)
            elif rewind:
                # Another read has moved this shared container: back to the first packet (seeking
                # also resets the decoder), where a fresh open would start.
                container.seek(_BEFORE_START, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                frame_time = _seconds(frame.pts, frame.time_base)
                if end is not None and frame_time is not None and frame_time >= end:
                    break
                if first_time is None:
                    first_time = frame_time if frame_time is not None else begin
                if direct is None:
                    direct = _is_target_audio(frame)
                if direct:
                    if not _is_target_audio(frame):
                        raise MediaError(path, "audio", "the sample format, rate or layout changes mid-stream")
                    # The one plane's samples, as to_ndarray() would give them minus its vstack copy.
                    chunks.append(np.frombuffer(frame.planes[0], dtype=np.float32, count=frame.samples))
                    continue
                if resampler is None:
                    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLING_RATE)
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            if resampler is not None:
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except (av.FFmpegError, OSError, OverflowError) as err:
            raise MediaError(path, "audio", f"decoding failed: {err}") from err
    if not chunks:
        raise MediaError(path, "audio", "no audio could be decoded in the segment")
    wave = np.concatenate(chunks).astype(np.float32, copy=False)
    offset = max(0, int(round((begin - (first_time or 0.0)) * SAMPLING_RATE)))
    stop = None if end is None else offset + int(round((float(end) - begin) * SAMPLING_RATE))
    segment = wave[offset:stop]
    if segment.size == 0:
        raise MediaError(path, "audio", f"no audio in the segment [{begin}, {end})")
    bad = segment.size - int(np.count_nonzero(np.isfinite(segment)))
    if bad:
        raise MediaError(path, "audio", f"{bad} samples are NaN or infinite (a damaged float recording)")
    return segment


def read_video(path: str | Path, num_frames: int | None = None) -> np.ndarray:
    """Whole video: every frame, or ``num_frames`` spread uniformly, as ``uint8 [T,H,W,3]``."""
    if num_frames is not None:
        return read_video_segment(path, num_frames=num_frames)
    with _open(path, "video") as container:
        if not container.streams.video:
            raise MediaError(path, "video", "no video stream")
        stream = container.streams.video[0]
        if not stream.codec_context.is_open:
            stream.thread_type = decoder_threads(stream.codec_context.width, stream.codec_context.height)
        converter = VideoReformatter()
        try:
            frames = [
                converter.reformat(frame, format="rgb24", threads=1).to_ndarray() for frame in container.decode(stream)
            ]
        except (av.FFmpegError, OSError) as err:
            raise MediaError(path, "video", f"decoding failed: {err}") from err
    if not frames:
        raise MediaError(path, "video", "no video frame could be decoded")
    return np.stack(frames)


def read_audio(path: str | Path) -> np.ndarray:
    """Whole first audio stream as ``float32 [L]``, mono, 16 kHz."""
    return read_audio_segment(path)
