"""Each format's data YAML builds its train/val/test datasets from files under ``data_root`` alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra.utils import instantiate

from mmtrain.config.compose import compose_config
from mmtrain.data.skips import SkippedSample

from ._media import copy, image_bytes, write_image, write_wav


def _mp4_label_json(root: Path, clip: Path) -> None:
    for split in ("train", "val", "test"):
        copy(clip, root / "mp4_label_json" / split / "videos" / "c.mp4")
        labels = root / "mp4_label_json" / split / "labels"
        labels.mkdir(parents=True)
        (labels / "c.json").write_text(json.dumps({"segments": [{"start": 0, "end": 1, "text": "t", "label": "joy"}]}))


def _meld(root: Path, clip: Path) -> None:
    folders = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
    for split, folder in folders.items():  # the MELD.Raw layout
        copy(clip, root / "meld" / folder / "dia0_utt0.mp4")
        rows = [["Utterance", "Dialogue_ID", "Utterance_ID", "Emotion"], ["Hi", "0", "0", "joy"]]
        with (root / "meld" / f"{split}_sent_emo.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows(rows)


def _parquet(root: Path, clip: Path) -> None:
    (root / "parquet").mkdir(parents=True)
    for split in ("train", "val", "test"):
        table = pa.table({"image_bytes": [image_bytes((1, 2, 3))], "caption": ["c"]})
        pq.write_table(table, root / "parquet" / f"{split}-00000.parquet")


def _image_pairs(root: Path, clip: Path) -> None:
    write_image(root / "image_pairs" / "images" / "a.png", (1, 2, 3))
    write_image(root / "image_pairs" / "images" / "b.png", (4, 5, 6))
    for split in ("train", "val", "test"):
        (root / "image_pairs" / f"{split}.csv").write_text("img1,img2,score1,score2,label\na.png,b.png,1,2,Second\n")


def _metadata(root: Path, clip: Path) -> None:
    write_wav(root / "metadata" / "a.wav")
    for split in ("train", "val", "test"):
        (root / "metadata" / f"{split}.jsonl").write_text(json.dumps({"audio_path": "a.wav", "text": "tone"}) + "\n")


def _instruction(root: Path, clip: Path) -> None:
    write_image(root / "instruction" / "i.png", (1, 2, 3))
    for split in ("train", "val", "test"):
        record = {"prompt": "p", "response": "r", "image": "i.png"}
        (root / "instruction" / f"{split}.jsonl").write_text(json.dumps(record) + "\n")


LAYOUTS = {
    "mp4_label_json": _mp4_label_json, "meld": _meld, "parquet": _parquet,
    "image_pairs": _image_pairs, "metadata": _metadata, "instruction": _instruction,
}


# Datasets decode the model's modalities (data.processor.modalities): give each format a model that fits.
IMAGE_TEXT = ["model/encoders/image=vit", "~model/encoders/video", "~model/encoders/audio"]
MODEL = {"parquet": IMAGE_TEXT, "image_pairs": IMAGE_TEXT, "instruction": IMAGE_TEXT,
         "metadata": ["~model/encoders/video"]}


@pytest.mark.parametrize("option", sorted(LAYOUTS))
def test_data_yaml_builds_datasets_from_data_root(option: str, tmp_path: Path, clip_source: Path) -> None:
    LAYOUTS[option](tmp_path, clip_source)
    cfg = compose_config([f"data={option}", f"++data_root={tmp_path}", *MODEL.get(option, [])])
    for split in ("train", "val", "test"):
        dataset = instantiate(cfg.data[split])
        assert isinstance(dataset.label_names, list)
        sample = next(iter(dataset))
        assert not isinstance(sample, SkippedSample), sample  # media found: every path came from data_root
        assert sample["id"] and any(sample.get(m) is not None for m in ("video", "audio", "image"))
