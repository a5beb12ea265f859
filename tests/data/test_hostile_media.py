"""Hostile and damaged media become a skipped sample with the reason, never a crash or a memory blow-up."""

from __future__ import annotations

import json
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from mmtrain.data.formats.mp4_label_json import Mp4LabelJsonDataset
from mmtrain.data.media import MediaError, read_audio_segment, read_video_segment
from mmtrain.data.images import read_image
from mmtrain.data.media_limits import MAX_FRAME_PIXELS, MAX_IMAGE_PIXELS
from mmtrain.data.skips import SkippedSample

from ._media import image_bytes, write_mp4


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("hostile") / "videos" / "clip.mp4", seconds=2.0)


@pytest.mark.parametrize(("start", "end", "reason"), [
    (0.0, 1e300, "runs past the video, which ends at 2.00 s"),
    (1e300, 2e300, "starts after the video ends"),
    (5.0, 6.0, "starts after the video ends"),
])
def test_segments_outside_the_clip_are_skipped_with_the_reason(clip: Path, tmp_path: Path, start: float, end: float,
                                                               reason: str) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "clip.json").write_text(json.dumps({"segments": [{"start": start, "end": end, "label": "a", "text": "t"}]}))
    sample = Mp4LabelJsonDataset(video_dir=str(clip.parent), label_dir=str(labels), label_names=["a"])[0]
    assert isinstance(sample, SkippedSample)
    assert reason in sample.error and sample.file.endswith("clip.mp4") and sample.id == "clip/0"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_readers_refuse_segments_they_cannot_seek_to(clip: Path, bad: float) -> None:
    with pytest.raises(MediaError, match="clip.mp4: segment"):
        read_video_segment(clip, num_frames=2, start=bad, end=1.0)
    with pytest.raises(MediaError, match="clip.mp4: segment"):
        read_audio_segment(clip, start=0.0 if bad < 0 else bad, end=bad if bad < 0 else 1.0)


def test_deeply_nested_label_json_names_the_file(clip: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match="deep.json: JSON nested too deeply"):
        Mp4LabelJsonDataset(video_dir=str(clip.parent), label_dir=str(labels), label_names=["a"])


def test_large_video_frames_are_scaled_down_in_the_decoder(tmp_path: Path) -> None:
    path = tmp_path / "big.mp4"
    width, height = 2560, 1920  # 4.9 Mpx, over the 2.1 Mpx cap
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for index in range(3):
            image = np.zeros((height, width, 3), dtype=np.uint8)
            image[:, : width // 2] = 200  # left half bright: the layout must survive the scaling
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 5)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    frames = read_video_segment(path, num_frames=2)
    _, h, w, _ = frames.shape
    assert h * w <= MAX_FRAME_PIXELS and abs(w / h - width / height) < 0.01
    assert frames[0, :, : w // 2 - 4].mean() > 190 and frames[0, :, w // 2 + 4 :].mean() < 10


def _png_declaring(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR says ``width`` x ``height`` (valid CRC): a decompression bomb's header."""
    data = bytearray(image_bytes((1, 2, 3), size=(8, 8)))
    ihdr = data[8 + 8 : 8 + 8 + 13]  # after the signature, chunk length and type
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(data)


def test_an_image_declaring_too_many_pixels_is_not_decoded(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(12000, 12000))
    assert 12000 * 12000 > MAX_IMAGE_PIXELS
    with pytest.raises(MediaError, match="bomb.png: declares 12000x12000 pixels \\(144 Mpx\\)"):
        read_image(bomb)


def _float_wav(path: Path, samples: np.ndarray) -> Path:
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_f32le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_non_finite_audio_is_refused_at_decode(tmp_path: Path) -> None:
    wave = np.sin(np.arange(16000) * 0.1).astype(np.float32)
    assert read_audio_segment(_float_wav(tmp_path / "ok.wav", wave)).size == 16000
    wave[100], wave[5000] = np.nan, np.inf
    with pytest.raises(MediaError, match="bad.wav: 2 samples are NaN or infinite"):
        read_audio_segment(_float_wav(tmp_path / "bad.wav", wave))
