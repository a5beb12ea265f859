"""Paths a data file names stay inside its data root (symlinks resolved) unless the user opts out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmtrain.data.formats.image_pairs import ImagePairDataset
from mmtrain.data.formats.instruction import InstructionDataset
from mmtrain.data.formats.meld import MeldDataset
from mmtrain.data.formats.metadata import MetadataDataset
from mmtrain.data.formats.mp4_label_json import Mp4LabelJsonDataset

from ._media import write_image

ESCAPES = ["../../../../../../../../../../etc/passwd", "/etc/passwd", "link-to-shadow", "sub/../../outside.png"]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "link-to-shadow").symlink_to("/etc/shadow")
    write_image(folder / "inside.png", (10, 20, 30))
    write_image(tmp_path / "outside.png", (200, 0, 0))
    return folder


def _metadata(root: Path, image: str, **kwargs: object) -> MetadataDataset:
    path = root / "meta.jsonl"
    path.write_text(json.dumps({"sample_id": "s1", "image_path": image, "text": "hi"}) + "\n")
    return MetadataDataset(path=str(path), root=str(root), modalities=["image", "text"], **kwargs)


@pytest.mark.parametrize("escape", ESCAPES)
def test_metadata_path_outside_the_root_is_refused(root: Path, escape: str) -> None:
    with pytest.raises(ValueError) as err:
        _metadata(root, escape)
    message = str(err.value)
    assert "meta.jsonl row 1 'image_path'" in message and "outside the data root" in message
    assert "allow_outside_root" in message


def test_inside_paths_and_symlinks_within_the_root_load(root: Path) -> None:
    (root / "sub" / "alias.png").symlink_to(root / "inside.png")
    assert _metadata(root, "sub/alias.png")[0]["image"].getpixel((0, 0)) == (10, 20, 30)
    assert _metadata(root, str(root / "inside.png"))[0]["image"].size == (12, 10)


def test_the_named_key_opts_out(root: Path) -> None:
    sample = _metadata(root, "../outside.png", allow_outside_root=True)[0]
    assert sample["image"].getpixel((0, 0)) == (200, 0, 0)


def test_mp4_label_json_video_outside_is_refused(root: Path) -> None:
    labels = root / "labels"
    labels.mkdir()
    (labels / "clip.json").write_text(json.dumps({"video": "../../../../etc/passwd",
                                                  "segments": [{"start": 0, "end": 1, "label": "a"}]}))
    with pytest.raises(ValueError, match=r"clip.json 'video': '../../../../etc/passwd' leads to .*etc/passwd, outside"):
        Mp4LabelJsonDataset(video_dir=str(root), label_dir=str(labels), label_names=["a"])


def test_image_pairs_meld_and_instruction_are_confined(root: Path) -> None:
    pairs = root / "pairs.csv"
    pairs.write_text("img1,img2,label\ninside.png,/etc/hostname,First\n")
    with pytest.raises(ValueError, match="pairs.csv row 2 img2: '/etc/hostname' leads to"):
        ImagePairDataset(csv_path=str(pairs), image_root=str(root))
    meld = root / "meld.csv"
    meld.write_text("Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID\nhi,A,joy,positive,0,0\n")
    with pytest.raises(ValueError, match="meld.csv row 2: '../dia0_utt0.mp4' leads to"):
        MeldDataset(csv_path=str(meld), video_dir=str(root), clip_pattern="../dia{dialogue}_utt{utterance}.mp4")
    chat = root / "chat.jsonl"
    chat.write_text(json.dumps({"id": "c", "prompt": "p", "response": "r", "image": "link-to-shadow"}) + "\n")
    with pytest.raises(ValueError, match="chat.jsonl row 1 'image': 'link-to-shadow' leads to /etc/shadow"):
        InstructionDataset(path=str(chat), root=str(root))
