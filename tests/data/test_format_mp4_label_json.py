"""Mp4LabelJsonDataset on real H.264/AAC files: segment frames, audio, ids, errors, skips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmtrain.data.formats.mp4_label_json import Mp4LabelJsonDataset

from ._media import assert_skip, copy, dominant_hz, frame_index, random_bytes, truncate

LABELS = ["neutral", "joy", "sad"]


def _write_json(path: Path, content: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content) if not isinstance(content, str) else content)
    return path


@pytest.fixture
def layout(tmp_path: Path, clip_source: Path) -> tuple[Path, Path]:
    videos, labels = tmp_path / "videos", tmp_path / "labels"
    copy(clip_source, videos / "clip_a.mp4")
    copy(clip_source, videos / "other.mp4")
    _write_json(labels / "clip_a.json", {"segments": [
        {"id": "s0", "start": 0.55, "end": 1.55, "text": "hello there", "emotion": "joy"},
        {"start": 0.0, "end": 1.0, "text": "bye", "emotion": "sad"},
    ]})
    _write_json(labels / "b.json", {"video": "other.mp4", "segments": [
        {"start": 1.0, "end": 2.0, "text": "late", "emotion": "neutral"},
    ]})
    return videos, labels


def _dataset(layout: tuple[Path, Path], **kwargs: object) -> Mp4LabelJsonDataset:
    videos, labels = layout
    options = {"label_names": LABELS, "label_key": "emotion", "num_frames": 5, **kwargs}
    return Mp4LabelJsonDataset(video_dir=str(videos), label_dir=str(labels), **options)  # type: ignore[arg-type]


def test_segments_become_samples_with_frames_audio_text_label(layout: tuple[Path, Path]) -> None:
    dataset = _dataset(layout)
    assert dataset.label_names == LABELS
    assert dataset.ids == ["b/0", "clip_a/s0", "clip_a/1"]
    sample = dataset[1]
    assert set(sample) == {"id", "video", "audio", "text", "label", "meta"}
    assert sample["id"] == "clip_a/s0" and sample["text"] == "hello there" and sample["label"] == 1
    video = sample["video"]
    assert video.dtype == np.uint8 and video.shape == (5, 32, 32, 3)
    # uniform times 0.65, 0.85, ..., 1.45 s at 10 fps -> source frames 6, 8, 10, 12, 14
    assert [frame_index(f) for f in video] == [6, 8, 10, 12, 14]
    audio = sample["audio"]
    assert audio.dtype == np.float32 and audio.ndim == 1 and abs(len(audio) - 16000) <= 160
    assert dominant_hz(audio) == pytest.approx(440, abs=5)
    assert sample["meta"]["start"] == 0.55 and sample["meta"]["end"] == 1.55
    assert sample["meta"]["video_path"].endswith("clip_a.mp4") and sample["meta"]["label_name"] == "joy"
    late = dataset[0]
    assert [frame_index(f) for f in late["video"]] == [11, 13, 15, 17, 19]
    assert late["label"] == 0 and late["meta"]["video_path"].endswith("other.mp4")


def test_modalities_limit_what_is_decoded(layout: tuple[Path, Path]) -> None:
    videos, _ = layout
    (videos / "clip_a.mp4").unlink()  # text-only: the video is never opened, so no skip
    sample = _dataset(layout, modalities=["text"])[1]
    assert set(sample) == {"id", "text", "label", "meta"}
    audio_only = _dataset(layout, modalities=["audio"])[0]
    assert "video" not in audio_only and "text" not in audio_only and audio_only["audio"].size > 0
    with pytest.raises(ValueError, match="modality 'image' is not one of"):
        _dataset(layout, modalities=["image"])


@pytest.mark.parametrize(
    ("segment", "message"),
    [
        ({"start": 0.0, "text": "x", "emotion": "joy"}, "clip_a.json segment 1: no key 'end'"),
        ({"start": 0.0, "end": 1.0, "text": "x", "emotion": "angry"},
         "clip_a.json segment 1: emotion 'angry' is not one of \\['neutral', 'joy', 'sad'\\]"),
        ({"start": 0.0, "end": 1.0, "text": "x"}, "clip_a.json segment 1: no key 'emotion'"),
        ({"start": 1.0, "end": 0.5, "text": "x", "emotion": "joy"}, "clip_a.json segment 1: needs 0 <= start < end"),
        ({"start": float("nan"), "end": 1.0, "text": "x", "emotion": "joy"}, "clip_a.json segment 1: needs 0 <= start < end"),
        ({"start": 0.0, "end": float("inf"), "text": "x", "emotion": "joy"}, "clip_a.json segment 1: needs 0 <= start < end"),
        ({"start": "soon", "end": 1.0, "text": "x", "emotion": "joy"}, "clip_a.json segment 1: start 'soon' is not a number"),
        ({"start": 0.0, "end": 1.0, "emotion": "joy"}, "clip_a.json segment 1: no key 'text'"),
        ({"id": "s0", "start": 0.0, "end": 1.0, "text": "x", "emotion": "joy"}, "segment 1: sample id 'clip_a/s0' is already used"),
    ],
)
def test_bad_segment_names_file_and_segment(layout: tuple[Path, Path], segment: dict, message: str) -> None:
    _, labels = layout
    _write_json(labels / "clip_a.json", {"segments": [
        {"id": "s0", "start": 0.0, "end": 1.0, "text": "ok", "emotion": "joy"}, segment,
    ]})
    with pytest.raises(ValueError, match=message):
        _dataset(layout)


def test_bad_annotation_files(layout: tuple[Path, Path], tmp_path: Path) -> None:
    videos, labels = layout
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Mp4LabelJsonDataset(video_dir=str(videos), label_dir=str(tmp_path / "nowhere"), label_names=LABELS)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no \\*.json"):
        Mp4LabelJsonDataset(video_dir=str(videos), label_dir=str(empty), label_names=LABELS)
    _write_json(labels / "broken.json", '{"segments": [')
    with pytest.raises(ValueError, match="broken.json row 1: malformed JSON"):
        _dataset(layout)
    _write_json(labels / "broken.json", {"clips": []})
    with pytest.raises(ValueError, match="broken.json: no key 'segments'"):
        _dataset(layout)
    with pytest.raises(ValueError, match="label_names is empty"):
        _dataset(layout, label_names=[])


def test_broken_videos_become_skips_naming_file_and_modality(
    layout: tuple[Path, Path], clip_source: Path, silent_clip_source: Path
) -> None:
    videos, _ = layout
    cases = {
        "truncated": lambda p: truncate(clip_source, p),
        "zero": lambda p: p.write_bytes(b""),
        "random": lambda p: random_bytes(p),
        "missing": lambda p: p.unlink(),
    }
    for name, make in cases.items():
        target = videos / "clip_a.mp4"
        copy(clip_source, target)
        make(target)
        for index in (1, 2):
            assert_skip(_dataset(layout)[index], target, "video")
        assert_skip(_dataset(layout, modalities=["audio", "text"])[1], target, "audio")
        assert isinstance(_dataset(layout)[0], dict), name  # the other video still decodes
    copy(silent_clip_source, videos / "clip_a.mp4")
    skip = _dataset(layout)[1]
    assert_skip(skip, videos / "clip_a.mp4", "audio")
    assert "no audio stream" in skip.error
