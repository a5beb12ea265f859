"""The decoding fast paths of ``mmtrain.data.media`` give exactly what the plain paths give.

Pinned against plain PyAV on real files (textured H.264 frames, AAC audio):

- one shared container (:class:`MediaFile`) for the video and the audio of a file == separate
  reads, in either order, for segments starting at 0 (which read from the first packet) and later;
- the reused single-threaded RGB converter == ``VideoFrame.to_ndarray(format="rgb24")``;
- mono float 16 kHz audio taken as decoded == the same audio through ``av.AudioResampler``;
- formats other than MP4/MOV are not shared (a container per read) and still give the same arrays;
- a dataset sample opens its mp4 once, and a broken file still becomes a skip naming it.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from mmtrain.data import media
from mmtrain.data.formats.mp4_label_json import Mp4LabelJsonDataset
from mmtrain.data.media import MediaError, MediaFile, read_audio_segment, read_video, read_video_segment

from ._media import assert_skip, random_bytes, truncate

FPS, WIDTH, HEIGHT, SECONDS = 10, 48, 32, 3


def write_textured(path: Path, *, rate: int = 16000, layout: str = "mono", container_format: str | None = None) -> Path:
    """H.264 (GOP 10, B-frames) of random textures + an AAC chirp: colour conversion and AAC decoding
    both have detail to get wrong."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=container_format) as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        video.options = {"g": "10", "bf": "2", "crf": "18", "preset": "veryfast"}
        sound = container.add_stream("aac", rate=rate, layout=layout)
        for index in range(SECONDS * FPS):
            image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        t = np.arange(SECONDS * rate) / rate
        channels = 2 if layout == "stereo" else 1
        tone = np.stack([0.4 * np.sin(2 * math.pi * (200 + 150 * t + 50 * c) * t) for c in range(channels)])
        tone = tone.astype(np.float32)
        for start in range(0, tone.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start : start + 1024]), format="fltp",
                                               layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fast")
    return {
        "mono16k": write_textured(folder / "mono16k.mp4"),
        "stereo44k": write_textured(folder / "stereo44k.mp4", rate=44100, layout="stereo"),
        "mkv": write_textured(folder / "mono16k.mkv", container_format="matroska"),
    }


def plain_frames(path: Path) -> np.ndarray:
    """Every frame, the plain PyAV way."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def resampled_audio(path: Path, start: float, end: float) -> np.ndarray:
    """The segment's audio through ``av.AudioResampler`` for every frame (the path without shortcut)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        chunks, first = [], None
        for frame in container.decode(stream):
            time = float(frame.pts * frame.time_base)
            if time >= end:
                break
            first = time if first is None else first
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    wave = np.concatenate(chunks)
    offset = max(0, int(round((start - first) * 16000)))
    return wave[offset : offset + int(round((end - start) * 16000))]


SEGMENTS = [(0.0, 1.0), (0.35, 1.65), (1.0, 2.0), (2.2, 3.0)]


def test_rgb_frames_equal_plain_to_ndarray(files: dict[str, Path]) -> None:
    every = plain_frames(files["mono16k"])
    assert np.array_equal(read_video(files["mono16k"]), every)
    # segment frames are the plain frames on screen at the target times (frame i shows from i / FPS)
    frames = read_video_segment(files["mono16k"], num_frames=5, start=0.32, end=1.62)
    wanted = [int(t * FPS) for t in media.segment_times(0.32, 1.62, 5)]  # 4, 7, 9, 12, 14
    assert np.array_equal(frames, every[wanted])


@pytest.mark.parametrize("start,end", SEGMENTS)
def test_audio_without_resampler_equals_resampled(files: dict[str, Path], start: float, end: float) -> None:
    fast = read_audio_segment(files["mono16k"], start=start, end=end)
    assert fast.dtype == np.float32
    assert np.array_equal(fast, resampled_audio(files["mono16k"], start, end))  # bit for bit
    # a stream that needs converting still goes through the resampler
    assert np.array_equal(read_audio_segment(files["stereo44k"], start=start, end=end),
                          resampled_audio(files["stereo44k"], start, end))


@pytest.mark.parametrize("name", ["mono16k", "stereo44k", "mkv"])
def test_shared_container_equals_separate_reads(files: dict[str, Path], name: str) -> None:
    path = files[name]
    for start, end in [*SEGMENTS, (None, None)]:
        video = read_video_segment(path, num_frames=4, start=start, end=end)
        audio = read_audio_segment(path, start=start, end=end)
        with MediaFile(path) as shared:  # the dataset's order: video, then audio
            assert np.array_equal(read_video_segment(shared, num_frames=4, start=start, end=end), video)
            assert np.array_equal(read_audio_segment(shared, start=start, end=end), audio)
        with MediaFile(path) as shared:  # and the other way round
            assert np.array_equal(read_audio_segment(shared, start=start, end=end), audio)
            assert np.array_equal(read_video_segment(shared, num_frames=4, start=start, end=end), video)


def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real = media.av.open

    def counting(file: str, *args: object, **kwargs: object) -> av.container.InputContainer:
        opened.append(Path(file).suffix)
        return real(file, *args, **kwargs)

    monkeypatch.setattr(media.av, "open", counting)
    return opened


def test_only_mp4_containers_are_shared(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    opened = count_opens(monkeypatch)
    for name in ("mono16k", "mkv"):
        with MediaFile(files[name]) as shared:
            read_video_segment(shared, num_frames=2, start=1.0, end=2.0)
            read_audio_segment(shared, start=0.0, end=1.0)
    assert opened == [".mp4", ".mkv", ".mkv"]


def _dataset(folder: Path, video: Path, starts: list[float]) -> Mp4LabelJsonDataset:
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    segments = [{"start": s, "end": s + 1.0, "text": "t", "label": "a"} for s in starts]
    (folder / "labels" / "clip.json").write_text(
        '{"video": "%s", "segments": %s}' % (video.name, str(segments).replace("'", '"'))
    )
    return Mp4LabelJsonDataset(video_dir=str(video.parent), label_dir=str(folder / "labels"), label_names=["a"],
                               num_frames=3)


def test_dataset_sample_opens_its_mp4_once(files: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = _dataset(tmp_path, files["mono16k"], [0.0, 1.5])
    opened = count_opens(monkeypatch)
    for index, start in enumerate([0.0, 1.5]):
        sample = dataset[index]
        assert np.array_equal(sample["video"], read_video_segment(files["mono16k"], num_frames=3, start=start,
                                                                  end=start + 1.0))
        assert np.array_equal(sample["audio"], read_audio_segment(files["mono16k"], start=start, end=start + 1.0))
    assert len(opened) == 2 + 4  # one per sample, then two per pair of separate reads
    only_audio = dataset.load(1, modalities={"audio"})
    assert "video" not in only_audio and only_audio["audio"].shape == (16000,)


def test_broken_shared_file_is_a_skip_naming_file_and_modality(files: dict[str, Path], tmp_path: Path) -> None:
    video = tmp_path / "videos" / "clip.mp4"
    video.parent.mkdir()
    dataset = _dataset(tmp_path, video, [0.0, 2.0])
    for make in (lambda: truncate(files["mono16k"], video, keep=0.5), lambda: random_bytes(video),
                 lambda: video.write_bytes(b""), lambda: video.unlink()):
        video.write_bytes(files["mono16k"].read_bytes())
        make()
        assert_skip(dataset[0], video, "video")
        assert_skip(dataset.load(0, modalities={"audio"}), video, "audio")
    with MediaFile(tmp_path / "none.mp4") as shared, pytest.raises(MediaError, match="none.mp4: file does not exist"):
        read_audio_segment(shared, start=0.0, end=1.0)
