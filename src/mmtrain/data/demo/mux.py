"""Write MP4 files with PyAV: H.264 (libx264, yuv420p) video + AAC mono audio, interleaved in time.

Deterministic by default: the same frames and samples give the same bytes (``+bitexact`` muxing, one
x264 thread without MB-tree/lookahead/B-frames, and RGB -> YUV done here in numpy rather than by
swscale, whose SIMD paths may depend on the input buffer's alignment).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np

AAC_FRAME = 1024  # samples per AAC frame
# BT.601 limited range (what decoders assume for untagged H.264): rows Y, Cb, Cr; columns R, G, B.
_RGB_TO_YUV = np.array([[0.256788, 0.504129, 0.097906], [-0.148223, -0.290993, 0.439216],
                        [0.439216, -0.367788, -0.071427]], np.float32)
_YUV_OFFSET = np.array([16.0, 128.0, 128.0], np.float32)


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """uint8 [H,W,3] RGB (even H, W) -> uint8 [H*3/2, W] planar YUV 4:2:0 (chroma averaged over 2x2)."""
    height, width = frame.shape[:2]
    yuv = frame.astype(np.float32) @ _RGB_TO_YUV.T + _YUV_OFFSET
    luma = np.clip(np.round(yuv[..., 0]), 0, 255).astype(np.uint8)
    chroma = yuv[..., 1:].reshape(height // 2, 2, width // 2, 2, 2).mean(axis=(1, 3))
    chroma = np.clip(np.round(chroma), 0, 255).astype(np.uint8)
    planes = [luma.reshape(-1), chroma[..., 0].reshape(-1), chroma[..., 1].reshape(-1)]
    return np.concatenate(planes).reshape(height * 3 // 2, width)


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    audio: np.ndarray | None,
    *,
    fps: int,
    sample_rate: int = 16000,
    gop: int | None = None,
    crf: int = 18,
    preset: str = "medium",
    audio_bit_rate: int = 48000,
    bitexact: bool = True,
) -> int:
    """Encode ``frames`` (uint8 [H,W,3] each, even H and W) and mono ``audio`` (float32 [L] in
    [-1, 1]) into ``path``. Audio up to each frame's end time is written right after that frame.

    Args:
        gop: frames between key frames (default ``fps``: one key frame a second).
        bitexact: same input, same bytes: one x264 thread, no MB-tree, no lookahead and no B-frames
            (with MB-tree on, x264 encoded tiny frames differently from run to run). ``False`` uses
            x264's defaults for those and all cores (for benchmarks).

    Returns:
        The number of video frames written.
    """
    gop = gop or fps
    options = {"crf": str(crf), "preset": preset, "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0",
               "threads": "1" if bitexact else "0",
               "x264-params": "log-level=error" + (":mbtree=0:rc-lookahead=0:bframes=0" if bitexact else "")}
    count = 0
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        video: av.VideoStream | None = None
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=sample_rate, layout="mono", options={"aac_coder": "fast"})
            sound.bit_rate = audio_bit_rate
            audio = np.ascontiguousarray(audio, dtype=np.float32)
        written = 0  # audio samples sent to the encoder
        for frame in frames:
            if video is None:
                video = container.add_stream("libx264", rate=fps, options=options)
                video.height, video.width = frame.shape[:2]
                video.pix_fmt = "yuv420p"
            if bitexact:
                picture = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            else:  # swscale: faster on large frames
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            picture.pts = count
            container.mux(video.encode(picture))
            count += 1
            if sound is not None:
                due = min(len(audio), (count * sample_rate) // fps)
                written = _encode_audio(container, sound, audio, written, due, sample_rate, final=False)
        if video is None:
            raise ValueError(f"{path}: no video frames to write")
        container.mux(video.encode(None))
        if sound is not None:
            _encode_audio(container, sound, audio, written, len(audio), sample_rate, final=True)
            container.mux(sound.encode(None))
    return count


def _encode_audio(
    container: av.container.OutputContainer, stream, audio: np.ndarray, start: int, stop: int,
    rate: int, *, final: bool,
) -> int:
    """Encode whole AAC frames of ``audio[start:stop]`` (and the tail when ``final``); returns the new start."""
    while stop - start >= AAC_FRAME or (final and stop > start):
        chunk = audio[start : min(stop, start + AAC_FRAME)]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        container.mux(stream.encode(frame))
        start += len(chunk)
    return start
