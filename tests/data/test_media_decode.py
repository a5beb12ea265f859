"""PyAV decoding of real files written here: segment frames, 16 kHz audio, images, broken files."""

from __future__ import annotations

import io
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from mmtrain.data.media import (
    MediaError,
    read_audio,
    read_audio_segment,
    read_video,
    read_video_segment,
    segment_times,
    video_duration,
)
from mmtrain.data.images import read_image

FPS = 10


def frame_value(index: int) -> int:
    return (index * 9) % 250


def write_clip(path: Path, seconds: float, *, tone: float = 440.0, gop: int = 10) -> Path:
    """H.264 video whose frame ``i`` is filled with ``frame_value(i)``, plus an AAC tone."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        video.options = {"g": str(gop), "crf": "10"}
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        for index in range(int(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), frame_value(index), np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        t = np.arange(int(seconds * 16000)) / 16000
        samples = (0.5 * np.sin(2 * np.pi * tone * t)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="flt", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, start
            for packet in audio.encode(chunk):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_clip(tmp_path_factory.mktemp("media") / "clip.mp4", 6.0)


def test_segment_frames_are_the_ones_on_screen_at_uniform_times(clip: Path) -> None:
    frames = read_video_segment(clip, num_frames=5, start=2.0, end=4.5)
    assert frames.shape == (5, 24, 32, 3) and frames.dtype == np.uint8
    expected = [frame_value(int(t * FPS)) for t in segment_times(2.0, 4.5, 5)]
    assert np.abs(frames[:, 12, 16, 0].astype(int) - expected).max() <= 3


def test_whole_video_and_duration(clip: Path) -> None:
    assert video_duration(clip) == pytest.approx(6.0, abs=0.11)
    every = read_video(clip)
    assert every.shape[0] == 60
    assert np.abs(every[:, 0, 0, 0].astype(int) - [frame_value(i) for i in range(60)]).max() <= 3
    assert read_video(clip, num_frames=3).shape == (3, 24, 32, 3)


def test_audio_segment_is_16k_mono_with_the_tone(clip: Path) -> None:
    segment = read_audio_segment(clip, start=2.0, end=3.5)
    assert segment.dtype == np.float32 and segment.ndim == 1
    assert abs(len(segment) - 24000) <= 160
    spectrum = np.abs(np.fft.rfft(segment))
    assert np.argmax(spectrum) * 16000 / len(segment) == pytest.approx(440, abs=5)
    assert np.sqrt(np.mean(segment**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_wav_at_8k_is_resampled_to_16k(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    t = np.arange(8000) / 8000
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        stereo = np.stack([np.sin(2 * np.pi * 300 * t)] * 2, axis=1) * 16000
        handle.writeframes(stereo.astype(np.int16).tobytes())
    audio = read_audio(path)
    assert abs(len(audio) - 16000) <= 64
    assert np.argmax(np.abs(np.fft.rfft(audio))) * 16000 / len(audio) == pytest.approx(300, abs=5)


def test_image_from_file_and_bytes(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "x.png")
    assert np.array_equal(np.asarray(read_image(tmp_path / "x.png")), array)
    buffer = io.BytesIO()
    Image.fromarray(array).convert("L").save(buffer, format="PNG")
    assert read_image(buffer.getvalue()).mode == "RGB"


def broken_files(folder: Path, clip: Path) -> dict[str, Path]:
    data = clip.read_bytes()
    jpeg = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(jpeg, format="JPEG")
    files = {
        "truncated.mp4": data[: len(data) // 3],
        "empty.mp4": b"",
        "random.mp4": np.random.default_rng(1).bytes(5000),
        "broken.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2],
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return {name: folder / name for name in files}


@pytest.mark.parametrize("name", ["truncated.mp4", "empty.mp4", "random.mp4", "missing.mp4"])
def test_broken_video_raises_media_error_naming_the_file(name: str, clip: Path, tmp_path: Path) -> None:
    broken_files(tmp_path, clip)
    with pytest.raises(MediaError) as err:
        frames = read_video_segment(tmp_path / name, num_frames=4, start=3.0, end=5.0)
        assert frames.size, "an empty array must never come back"
    assert name in str(err.value) and err.value.modality == "video"


@pytest.mark.parametrize("name", ["empty.mp4", "random.mp4", "missing.mp4"])
def test_broken_audio_raises_media_error(name: str, clip: Path, tmp_path: Path) -> None:
    broken_files(tmp_path, clip)
    with pytest.raises(MediaError) as err:
        read_audio_segment(tmp_path / name, start=0.0, end=1.0)
    assert name in str(err.value) and err.value.modality == "audio"


def test_broken_and_missing_images(clip: Path, tmp_path: Path) -> None:
    files = broken_files(tmp_path, clip)
    for source in (files["broken.jpg"], files["broken.jpg"].read_bytes(), tmp_path / "none.png", b""):
        with pytest.raises(MediaError) as err:
            read_image(source)
        assert err.value.modality == "image"


def test_segment_past_the_end_of_a_cut_short_video_is_an_error(clip: Path) -> None:
    with pytest.raises(MediaError) as err:
        read_video_segment(clip, num_frames=4, start=5.0, end=9.0)
    assert "ends at" in str(err.value)
    assert read_video_segment(clip, num_frames=4, start=5.0, end=6.0).shape[0] == 4
