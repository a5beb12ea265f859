"""MetadataDataset (audio/image-text JSON or JSONL) and InstructionDataset (prompt/response JSONL)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmtrain.data.formats.instruction import InstructionDataset
from mmtrain.data.formats.metadata import MetadataDataset

from ._media import assert_skip, copy, dominant_hz, frame_index, random_bytes, write_image, write_wav


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@pytest.fixture
def media_root(tmp_path: Path, clip_source: Path) -> Path:
    root = tmp_path / "root"
    write_wav(root / "audio" / "a1.wav", seconds=1.0, rate=8000, tone_hz=440)
    write_wav(root / "audio" / "a2.wav", seconds=0.5, rate=22050, tone_hz=1000)
    write_image(root / "images" / "red.png", (255, 0, 0))
    write_image(root / "images" / "blue.jpg", (0, 0, 255))
    copy(clip_source, root / "videos" / "clip.mp4")
    return root


META = [
    {"sample_id": "a1", "audio_path": "audio/a1.wav", "text": "a low tone", "label": "tone"},
    {"audio_path": "audio/a2.wav", "text": "a high tone", "label": "tone"},
    {"sample_id": "img", "image_path": "images/red.png", "caption": "a red square", "label": "shape"},
]


def test_metadata_json_list_audio_image_text_label(media_root: Path) -> None:
    path = media_root / "meta.json"
    path.write_text(json.dumps(META))
    dataset = MetadataDataset(path=str(path), root=str(media_root), label_key="label", label_names=["shape", "tone"])
    assert dataset.ids == ["a1", "meta/1", "img"] and dataset.label_names == ["shape", "tone"]
    first = dataset[0]
    assert set(first) == {"id", "audio", "text", "label", "meta"}
    assert first["audio"].dtype == np.float32 and abs(len(first["audio"]) - 16000) <= 16  # 8 kHz -> 16 kHz
    assert dominant_hz(first["audio"]) == pytest.approx(440, abs=5)
    assert dominant_hz(dataset[1]["audio"]) == pytest.approx(1000, abs=5) and abs(len(dataset[1]["audio"]) - 8000) <= 16
    image = dataset[2]
    assert set(image) == {"id", "image", "text", "label", "meta"}
    assert image["image"].getpixel((1, 1)) == (255, 0, 0) and image["text"] == "a red square" and image["label"] == 0
    assert image["meta"]["image_path"] == str(media_root / "images" / "red.png")


def test_metadata_jsonl_unlabelled_and_modalities(media_root: Path) -> None:
    path = _jsonl(media_root / "meta.jsonl", [{k: v for k, v in r.items() if k != "label"} for r in META])
    dataset = MetadataDataset(path=str(path), root=str(media_root))
    assert dataset.label_names == [] and "label" not in dataset[0]
    text_only = MetadataDataset(path=str(path), root=str(media_root), modalities=["text"])
    (media_root / "audio" / "a1.wav").unlink()  # never opened for text only
    assert set(text_only[0]) == {"id", "text", "meta"}
    captions = MetadataDataset(path=str(path), root=str(media_root), text_key="caption", modalities=["image"])
    assert captions.ids == ["a1", "meta/1", "img"] and "text" not in captions[2]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([META[0], {"text": "no media"}], "meta.jsonl row 2: no key 'audio_path' or 'image_path'"),
        ([META[0], {"audio_path": "audio/a2.wav"}], "meta.jsonl row 2: no key 'text' or 'caption'"),
        ([META[0], {**META[1], "label": "noise"}], r"meta.jsonl row 2: label 'noise' is not one of \['shape', 'tone'\]"),
        ([META[0], {**META[1], "sample_id": "a1"}], "meta.jsonl row 2: sample id 'a1' is already used at .*row 1"),
        ([META[0], {**META[1], "audio_path": 7}], "meta.jsonl row 2: audio_path must be a string"),
    ],
)
def test_metadata_errors_name_file_and_row(media_root: Path, records: list[dict], message: str) -> None:
    path = _jsonl(media_root / "meta.jsonl", records)
    with pytest.raises(ValueError, match=message):
        MetadataDataset(path=str(path), root=str(media_root), label_key="label", label_names=["shape", "tone"])


def test_metadata_file_errors(media_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        MetadataDataset(path=str(media_root / "absent.jsonl"), root=str(media_root))
    bad = media_root / "bad.jsonl"
    bad.write_text(json.dumps(META[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match="bad.jsonl row 2: malformed JSON"):
        MetadataDataset(path=str(bad), root=str(media_root))
    listed = media_root / "list.json"
    listed.write_text(json.dumps([META[0], ["not", "an", "object"]]))
    with pytest.raises(ValueError, match="list.json item 1: expected a JSON object"):
        MetadataDataset(path=str(listed), root=str(media_root))
    with pytest.raises(ValueError, match="give label_key and label_names together"):
        MetadataDataset(path=str(listed), root=str(media_root), label_key="label")


def test_metadata_broken_media_become_skips(media_root: Path) -> None:
    random_bytes(media_root / "audio" / "a1.wav")
    (media_root / "images" / "red.png").write_bytes(b"")
    path = _jsonl(media_root / "meta.jsonl", META)
    dataset = MetadataDataset(path=str(path), root=str(media_root))
    assert_skip(dataset[0], media_root / "audio" / "a1.wav", "audio")
    assert isinstance(dataset[1], dict)
    assert_skip(dataset[2], media_root / "images" / "red.png", "image")


INSTRUCTIONS = [
    {"id": "q1", "prompt": "What colour?", "response": "Blue.", "image": "images/blue.jpg"},
    {"prompt": "Describe the clip.", "response": "Grey frames getting lighter.", "video": "videos/clip.mp4",
     "audio": "audio/a1.wav"},
    {"prompt": "Say hi.", "response": "Hi."},
]


def test_instruction_prompt_response_and_media(media_root: Path) -> None:
    path = _jsonl(media_root / "train.jsonl", INSTRUCTIONS)
    dataset = InstructionDataset(path=str(path), root=str(media_root), num_frames=4)
    assert dataset.label_names == [] and dataset.ids == ["q1", "train/1", "train/2"]
    first = dataset[0]
    assert set(first) == {"id", "text", "target_text", "image", "meta"}
    assert first["text"] == "What colour?" and first["target_text"] == "Blue."
    red, green, blue = first["image"].getpixel((2, 2))
    assert blue > 200 and red < 40 and green < 40
    clip = dataset[1]
    assert set(clip) == {"id", "text", "target_text", "video", "audio", "meta"}
    assert clip["video"].shape == (4, 32, 32, 3) and [frame_index(f) for f in clip["video"]] == [2, 7, 12, 17]
    assert dominant_hz(clip["audio"]) == pytest.approx(440, abs=5)
    assert set(dataset[2]) == {"id", "text", "target_text", "meta"}
    text_only = InstructionDataset(path=str(path), root=str(media_root), modalities=["text"])
    assert set(text_only[1]) == {"id", "text", "target_text", "meta"}


def test_alpaca_records_compose_instruction_and_input(media_root: Path) -> None:
    rows = [{"instruction": "Translate to French.", "input": "cat", "output": "chat"},
            {"instruction": "Name a colour.", "input": "", "output": "blue"},
            {"instruction": "Count.", "output": "one two"}]
    path = _jsonl(media_root / "alpaca.jsonl", rows)
    dataset = InstructionDataset(path=str(path), root=str(media_root), prompt_key="instruction", response_key="output",
                                 input_key="input", modalities=["text"])
    assert [dataset[i]["text"] for i in range(3)] == ["Translate to French.\n\ncat", "Name a colour.", "Count."]
    assert [dataset[i]["target_text"] for i in range(3)] == ["chat", "blue", "one two"]
    bad = _jsonl(media_root / "bad.jsonl", [{"instruction": "x", "input": 3, "output": "y"}])
    with pytest.raises(ValueError, match="bad.jsonl row 1"):
        InstructionDataset(path=str(bad), root=str(media_root), prompt_key="instruction", response_key="output",
                           input_key="input")


def test_instruction_errors_and_skips(media_root: Path) -> None:
    path = _jsonl(media_root / "train.jsonl", [INSTRUCTIONS[0], {"prompt": "no answer"}])
    with pytest.raises(ValueError, match="train.jsonl row 2: no key 'response'"):
        InstructionDataset(path=str(path), root=str(media_root))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        InstructionDataset(path=str(media_root / "missing.jsonl"), root=str(media_root))
    path = _jsonl(media_root / "train.jsonl", INSTRUCTIONS)
    (media_root / "videos" / "clip.mp4").write_bytes(b"\x00" * 100)
    skip = InstructionDataset(path=str(path), root=str(media_root))[1]
    assert_skip(skip, media_root / "videos" / "clip.mp4", "video")


def test_metadata_row_with_image_and_audio_gives_both(media_root: Path) -> None:
    from mmtrain.data.formats.metadata import MetadataDataset

    write_image(media_root / "tri" / "a.png", (200, 10, 10))
    write_wav(media_root / "tri" / "a.wav")
    path = media_root / "tri" / "tri.jsonl"
    path.write_text('{"image_path": "a.png", "audio_path": "a.wav", "caption": "a cat", "label": 1}\n')
    sample = MetadataDataset(path=str(path), root=str(media_root / "tri"), text_key="caption", label_key="label",
                             label_names=["dog", "cat"])[0]
    assert sample["image"].size[0] > 0 and sample["audio"].ndim == 1 and sample["text"] == "a cat"
    assert sample["label"] == 1 and set(sample["meta"]) == {"image_path", "audio_path"}
