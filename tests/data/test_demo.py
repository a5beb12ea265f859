"""The spoken-digits demo set: real builds of the tiny size (needs espeak-ng and the asterisk voices)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from mmtrain.data.demo import DemoSourceError, build_demo, ensure_demo, read_manifest
from mmtrain.data.demo.spec import MEDIA, MODALITIES, SPLITS, WORDS
from mmtrain.data.demo.views import ANSWERS, QUESTIONS, QUESTIONS_PER_ITEM
from mmtrain.data.demo.voices import RECORDINGS, SOUNDS_DIR
from mmtrain.data.formats.instruction import InstructionDataset
from mmtrain.data.media import read_audio, read_audio_segment, read_video_segment, video_duration
from mmtrain.data.images import read_image

SEGMENT_KEYS = {"id", "start", "end", "text", "label", "speaker", "image_source", "corrupted"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny set built twice with the same seed, into two folders."""
    base = tmp_path_factory.mktemp("demo")
    return build_demo(base / "a", seed=0, size="tiny"), build_demo(base / "b", seed=0, size="tiny")


def labels_of(root: Path, split: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "labels" / split).glob("*.json"))]


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_same_seed_gives_identical_annotations_and_media(built: tuple[Path, Path]) -> None:
    a, b = built
    assert all_files(a) == all_files(b)
    annotations = [*read_manifest(a)["files"], "manifest.json"]
    assert any(name.endswith(".parquet") for name in annotations)
    for name in annotations:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for split in SPLITS:
        clip = sorted((a / "videos" / split).glob("*.mp4"))[0].name
        for start in (0.0, 2.0):
            frames_a = read_video_segment(a / "videos" / split / clip, num_frames=8, start=start, end=start + 1)
            frames_b = read_video_segment(b / "videos" / split / clip, num_frames=8, start=start, end=start + 1)
            np.testing.assert_array_equal(frames_a, frames_b)
            np.testing.assert_array_equal(read_audio_segment(a / "videos" / split / clip, start=start, end=start + 1),
                                          read_audio_segment(b / "videos" / split / clip, start=start, end=start + 1))


def test_other_seed_gives_other_content(built: tuple[Path, Path], tmp_path: Path) -> None:
    other = build_demo(tmp_path / "c", seed=1, size="tiny")
    first = built[0]
    assert [c["segments"] for c in labels_of(other, "train")] != [c["segments"] for c in labels_of(first, "train")]


def test_label_json_schema(built: tuple[Path, Path]) -> None:
    root = built[0]
    for split in SPLITS:
        clips = labels_of(root, split)
        assert len(clips) == read_manifest(root)["counts"][split]["clips"]
        for clip in clips:
            assert (root / "videos" / split / clip["video"]).is_file()
            assert len(clip["segments"]) == MEDIA.segments_per_clip
            for index, segment in enumerate(clip["segments"]):
                assert SEGMENT_KEYS <= set(segment)
                assert segment["id"] == f"s{index}"
                assert (segment["start"], segment["end"]) == (float(index), float(index + 1))
                assert segment["label"] in WORDS
                assert set(segment["corrupted"]) <= set(MODALITIES) and len(segment["corrupted"]) < 3
                if "text" not in segment["corrupted"]:
                    assert segment["label"] in segment["text"].split()
                elif segment["text"]:
                    assert segment["label"] not in segment["text"].split()


def test_mp4_streams_segments_and_audio_energy(built: tuple[Path, Path]) -> None:
    root = built[0]
    clean_energy, silent_energy = [], []
    for split in SPLITS:
        for clip in labels_of(root, split):
            path = root / "videos" / split / clip["video"]
            with av.open(str(path)) as container:
                video, audio = container.streams.video[0], container.streams.audio[0]
                assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
                assert (video.width, video.height) == (MEDIA.frame_size, MEDIA.frame_size)
                assert audio.rate == 16000 and audio.channels == 1
                assert video.frames == MEDIA.fps * MEDIA.segments_per_clip
            assert video_duration(path) == pytest.approx(len(clip["segments"]) * MEDIA.segment_seconds, abs=0.01)
            for segment in clip["segments"]:
                frames = read_video_segment(path, num_frames=MEDIA.fps, start=segment["start"], end=segment["end"])
                assert frames.shape == (MEDIA.fps, MEDIA.frame_size, MEDIA.frame_size, 3)
                wave = read_audio_segment(path, start=segment["start"], end=segment["end"])
                assert len(wave) == 16000
                rms = float(np.sqrt(np.mean(wave**2)))
                if "audio" not in segment["corrupted"]:
                    clean_energy.append(rms)
                    assert np.abs(wave).max() > 0.1, (clip["video"], segment["id"])
                elif segment["corruption"]["audio"] == "silence":
                    silent_energy.append(rms)
    assert clean_energy and min(clean_energy) > 0.01
    assert all(rms < 0.005 for rms in silent_energy)


def test_voices_and_images_held_out(built: tuple[Path, Path]) -> None:
    root = built[0]
    manifest = read_manifest(root)
    declared = {s: set(manifest["sources"]["voices"][s]["recorded"] + manifest["sources"]["voices"][s]["espeak"])
                for s in SPLITS}
    used = {s: {seg["speaker"] for clip in labels_of(root, s) for seg in clip["segments"]} for s in SPLITS}
    images = {s: {seg["image_source"] for clip in labels_of(root, s) for seg in clip["segments"]} for s in SPLITS}
    for split in SPLITS:
        assert used[split] <= declared[split]
        assert set(manifest["sources"]["used"][split]["speakers"]) == used[split]
    for held_out in ("val", "test"):
        assert not declared["train"] & declared[held_out]
        assert not used["train"] & used[held_out]
        assert not images["train"] & images[held_out]
        assert declared["train"] and declared[held_out]
    assert not declared["val"] & declared["test"]
    ranges = [(info["source"], *info["indices"], split)
              for split in SPLITS for info in manifest["sources"]["images"][split]]
    for source, start, stop, split in ranges:
        for other, o_start, o_stop, o_split in ranges:
            if split != o_split and source == other:
                assert stop <= o_start or o_stop <= start, (split, o_split)
        for ref in images[split]:
            name, index = ref.rsplit(":", 1)
            assert any(name == s and lo <= int(index) < hi for s, lo, hi, sp in ranges if sp == split), ref


def test_parquet_view(built: tuple[Path, Path]) -> None:
    root = built[0]
    for split in SPLITS:
        file = pq.ParquetFile(root / "parquet" / f"{split}.parquet")
        assert file.metadata.num_row_groups >= 2
        table = file.read().to_pylist()
        assert len(table) == read_manifest(root)["counts"][split]["segments"]
        for row in table:
            assert {"sample_id", "image_bytes", "caption", "question", "answer", "label"} <= set(row)
            image = read_image(row["image_bytes"])
            assert image.size == (MEDIA.frame_size, MEDIA.frame_size) and image.mode == "RGB"
            assert row["answer"] == WORDS[row["label"]] and row["caption"] == f"a handwritten {row['answer']}"
            assert row["question"] == "Which digit is shown?"
            assert np.asarray(image).max() > 128


def test_pairs_and_metadata_views(built: tuple[Path, Path]) -> None:
    root = built[0]
    for split in SPLITS:
        with (root / "pairs" / f"{split}.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert rows and set(rows[0]) == {"img1", "img2", "score1", "score2", "label"}
        for row in rows:
            s1, s2 = int(row["score1"]), int(row["score2"])
            assert row["label"] == ("First" if s1 > s2 else "Second" if s1 < s2 else "Similar")
            assert row["img1"].startswith(f"images/{split}/") and (root / row["img1"]).is_file()
            assert (root / row["img2"]).is_file()
        audio_rows = [json.loads(x) for x in (root / "metadata" / f"{split}_audio_text.jsonl").read_text().splitlines()]
        image_rows = [json.loads(x) for x in (root / "metadata" / f"{split}_image_text.jsonl").read_text().splitlines()]
        assert len(audio_rows) == len(image_rows) == read_manifest(root)["counts"][split]["segments"]
        for row in audio_rows[:4]:
            assert row["audio_path"].startswith(f"audio/{split}/") and row["text"] in WORDS
            assert len(read_audio(root / row["audio_path"])) == 16000
        for row in image_rows[:4]:
            assert row["caption"].startswith("a handwritten ") and read_image(root / row["image_path"]).size == (32, 32)
        trimodal = [json.loads(x) for x in (root / "metadata" / f"{split}_image_audio_text.jsonl").read_text().splitlines()]
        assert [(r["image_path"], r["caption"]) for r in trimodal] == [(r["image_path"], r["caption"]) for r in image_rows]
        assert [(r["audio_path"], r["text"]) for r in trimodal] == [(r["audio_path"], r["text"]) for r in audio_rows]


def test_manifest_records_hashes_counts_and_parameters(built: tuple[Path, Path]) -> None:
    root = built[0]
    manifest = read_manifest(root)
    assert manifest["parameters"]["seed"] == 0 and manifest["parameters"]["size"] == "tiny"
    assert manifest["mmtrain_version"]
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest
    for split in SPLITS:
        counts = manifest["counts"][split]
        assert sum(counts["per_class"].values()) == counts["segments"]
        assert set(manifest["corruption_rates"][split]) >= {*MODALITIES, "none"}


def test_ensure_demo_reuses_or_rebuilds(built: tuple[Path, Path], tmp_path: Path) -> None:
    root = tmp_path / "set"
    ensure_demo(root, seed=0, size="tiny")
    stamp = (root / "manifest.json").stat().st_mtime_ns
    assert ensure_demo(root, seed=0, size="tiny") == root.absolute()
    assert (root / "manifest.json").stat().st_mtime_ns == stamp
    ensure_demo(root, seed=3, size="tiny")
    assert read_manifest(root)["parameters"]["seed"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no scratch or old folders left


def test_interrupted_build_leaves_no_set(tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def stop_after_first_clip(split: str, done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        build_demo(tmp_path / "set", size="tiny", progress=stop_after_first_clip)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing"):
        build_demo(tmp_path, size="tiny")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_missing_voices_name_the_debian_packages(tmp_path: Path) -> None:
    empty = tmp_path / "sounds"
    empty.mkdir()
    with pytest.raises(DemoSourceError, match="no recorded voices found") as info:
        build_demo(tmp_path / "set", size="tiny", sounds_dir=empty)
    assert "apt-get install" in str(info.value)
    for recording in RECORDINGS:
        assert recording.package in str(info.value)
    assert not (tmp_path / "set").exists()
    # one voice missing: only its package is named
    partial = tmp_path / "partial"
    partial.mkdir()
    for recording in RECORDINGS[:-1]:
        if not (partial / recording.folder).exists():
            (partial / recording.folder).symlink_to(SOUNDS_DIR / recording.folder)
    with pytest.raises(DemoSourceError) as info:
        build_demo(tmp_path / "set", size="tiny", sounds_dir=partial)
    assert RECORDINGS[-1].package in str(info.value) and RECORDINGS[0].package not in str(info.value)


def test_missing_espeak_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(DemoSourceError, match="espeak-ng") as info:
        build_demo(tmp_path / "set", size="tiny", espeak=str(tmp_path / "no-espeak-here"))
    assert "apt-get install espeak-ng" in str(info.value)


def test_instruction_view_loads_as_instruction_data(built: tuple[Path, Path]) -> None:
    root = built[0]
    for split in SPLITS:
        rows = [json.loads(x) for x in (root / "instruction" / f"{split}.jsonl").read_text().splitlines()]
        assert len(rows) == QUESTIONS_PER_ITEM * read_manifest(root)["counts"][split]["segments"]
        for row in rows:
            question, answer = QUESTIONS[row["kind"]]
            assert row["prompt"] == question and row["response"] == answer(row["label"])
            assert row["response"] in ANSWERS and row["image"].startswith(f"images/{split}/")
        kinds_per_item: dict[str, set[str]] = {}
        for row in rows:
            kinds_per_item.setdefault(row["image"], set()).add(row["kind"])
        assert all(len(k) == QUESTIONS_PER_ITEM for k in kinds_per_item.values())
    dataset = InstructionDataset(path=str(root / "instruction" / "test.jsonl"), root=str(root),
                                 modalities=["image", "text"])
    sample = dataset[0]
    assert sample["id"] == rows[0]["id"] and sample["text"] == rows[0]["prompt"]  # rows: the test split's
    assert sample["target_text"] in ANSWERS and sample["image"].size == (MEDIA.frame_size, MEDIA.frame_size)


def test_a_build_inside_train_reports_progress_per_split(tmp_path, caplog) -> None:
    import logging

    from mmtrain.data.demo import ensure_demo

    with caplog.at_level(logging.INFO, logger="mmtrain.data.demo"):
        ensure_demo(tmp_path / "demo", size="tiny")  # off a terminal: a line per split, not 30 s of silence
    built = [r.getMessage() for r in caplog.records if "split built" in r.getMessage()]
    assert built == ["demo set: train split built (4 clips)", "demo set: val split built (2 clips)",
                     "demo set: test split built (2 clips)"]


def test_the_default_images_do_not_depend_on_what_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An OpenCV digits sheet present on the machine joins the test images only when asked for by name
    (or with ``auto``): the default set, and the README's figures, are the same everywhere."""
    from PIL import Image

    from mmtrain.data.demo import images

    sheet = np.zeros((1000, 2000), np.uint8)  # 50 x 100 tiles of 20x20, 5 rows per digit, like digits.png
    sheet[:, ::20] = 255
    sheet[::20, 5:15] = 255
    Image.fromarray(sheet).save(tmp_path / "digits.png")
    monkeypatch.setattr(images, "OPENCV_DIGITS", tmp_path / "digits.png")
    sources = {request: {info["source"] for info in images.build_pools(*request).get("test").description}
               for request in [(), ("auto",), ("opencv_digits",)]}
    assert sources == {(): {"sklearn_digits"}, ("auto",): {"opencv_digits"}, ("opencv_digits",): {"opencv_digits"}}
