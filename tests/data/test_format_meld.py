"""MeldDataset on a real MELD-style CSV and H.264/AAC clips."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mmtrain.data.formats.meld import MELD_EMOTIONS, MeldDataset

from ._media import assert_skip, copy, dominant_hz, frame_index, random_bytes

COLUMNS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
           "Season", "Episode", "StartTime", "EndTime"]
ROWS = [
    ["1", "Oh my God, he’s lost it.", "Monica", "surprise", "negative", "0", "0", "3", "19", "00:14:38,127", "00:14:40,000"],
    ["2", "Yeah, “totally”, he is!", "Joey", "joy", "positive", "0", "1", "3", "19", "00:14:40,100", "00:14:42,000"],
    ["3", "Fine.", "Ross", "neutral", "neutral", "1", "0", "4", "2", "00:01:00,000", "00:01:02,000"],
]


def _write_csv(path: Path, rows: list[list[str]], columns: list[str] = COLUMNS) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


@pytest.fixture
def meld(tmp_path: Path, clip_source: Path) -> tuple[Path, Path]:
    videos = tmp_path / "train_splits"
    for name in ("dia0_utt0", "dia0_utt1", "dia1_utt0"):
        copy(clip_source, videos / f"{name}.mp4")
    return _write_csv(tmp_path / "meld.csv", ROWS), videos


def _dataset(meld: tuple[Path, Path], **kwargs: object) -> MeldDataset:
    csv_path, videos = meld
    return MeldDataset(csv_path=str(csv_path), video_dir=str(videos), num_frames=4, **kwargs)  # type: ignore[arg-type]


def test_utterances_are_whole_clips_with_text_label_and_episode_times(meld: tuple[Path, Path]) -> None:
    dataset = _dataset(meld)
    assert dataset.label_names == list(MELD_EMOTIONS)
    assert dataset.ids == ["dia0_utt0", "dia0_utt1", "dia1_utt0"]
    sample = dataset[1]
    assert set(sample) == {"id", "video", "audio", "text", "label", "meta"}
    assert sample["text"] == "Yeah, “totally”, he is!"
    assert sample["label"] == MELD_EMOTIONS.index("joy")
    assert sample["video"].dtype == np.uint8 and sample["video"].shape == (4, 32, 32, 3)
    assert [frame_index(f) for f in sample["video"]] == [2, 7, 12, 17]  # 4 uniform times over 2 s
    assert sample["audio"].dtype == np.float32 and abs(len(sample["audio"]) - 32000) <= 2048
    assert dominant_hz(sample["audio"]) == pytest.approx(440, abs=5)
    meta = sample["meta"]
    assert meta["StartTime"] == "00:14:40,100" and meta["EndTime"] == "00:14:42,000"
    assert meta["Speaker"] == "Joey" and meta["Sentiment"] == "positive" and meta["label_name"] == "joy"
    assert meta["video_path"].endswith("dia0_utt1.mp4")


def test_sentiment_column_and_minimal_csv(meld: tuple[Path, Path], tmp_path: Path) -> None:
    sentiment = _dataset(meld, label_column="Sentiment", label_names=["negative", "neutral", "positive"])
    assert [sentiment[i]["label"] for i in range(3)] == [0, 2, 1]
    minimal = _write_csv(tmp_path / "minimal.csv", [["Hi.", "0", "0", "anger"]],
                         ["Utterance", "Dialogue_ID", "Utterance_ID", "Emotion"])
    dataset = MeldDataset(csv_path=str(minimal), video_dir=str(meld[1]), modalities=["text"])
    assert dataset[0] == {"id": "dia0_utt0", "text": "Hi.", "label": MELD_EMOTIONS.index("anger"),
                          "meta": dataset[0]["meta"]}
    assert "video" not in dataset[0]


def test_annotation_errors_name_file_and_row(meld: tuple[Path, Path], tmp_path: Path) -> None:
    csv_path, videos = meld
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        MeldDataset(csv_path=str(tmp_path / "absent.csv"), video_dir=str(videos))
    rows = [*ROWS[:2], [*ROWS[2][:3], "joyful", *ROWS[2][4:]]]
    _write_csv(csv_path, rows)
    with pytest.raises(ValueError, match=r"meld.csv row 4: Emotion 'joyful' is not one of \['neutral'"):
        _dataset(meld)
    _write_csv(csv_path, [[*ROWS[0][:5], "zero", *ROWS[0][6:]]])
    with pytest.raises(ValueError, match="meld.csv row 2: Dialogue_ID 'zero' is not an integer"):
        _dataset(meld)
    _write_csv(csv_path, [ROWS[0], ROWS[0]])
    with pytest.raises(ValueError, match="meld.csv row 3: sample id 'dia0_utt0' is already used at .*row 2"):
        _dataset(meld)
    _write_csv(csv_path, [row[:6] for row in ROWS], COLUMNS[:6])
    with pytest.raises(ValueError, match="meld.csv: no column 'Utterance_ID'"):
        _dataset(meld)


def test_broken_clips_become_skips(meld: tuple[Path, Path]) -> None:
    _, videos = meld
    (videos / "dia0_utt0.mp4").write_bytes(b"")
    random_bytes(videos / "dia0_utt1.mp4")
    (videos / "dia1_utt0.mp4").unlink()
    dataset = _dataset(meld)
    assert_skip(dataset[0], videos / "dia0_utt0.mp4", "video")
    assert_skip(dataset[1], videos / "dia0_utt1.mp4", "video")
    assert_skip(dataset[2], videos / "dia1_utt0.mp4", "video")
    assert "does not exist" in dataset[2].error
