"""Packed shards (``mmtrain data pack`` -> ``shards.source=``): the samples of the source format, bit for bit, read
locally, over HTTP and from S3 (servers on 127.0.0.1); WebDataset tars (the webdataset library and Hugging Face's loader read them), or with an mp4 stored once per shard;
damage named by shard and sample; undecodable samples in the ledger instead of a shard; the demo trained from
shards over HTTP with 2 workers, killed (-9) and resumed, bit-identical to the run from its files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _cli import run_mmtrain
from _multiproc import SIGKILLED, killed_ddp_run
from _servers import http_server, s3_server

from mmtrain.data.formats.mp4_label_json import Mp4LabelJsonDataset
from mmtrain.data.formats.shards import ShardsDataset
from mmtrain.data.shards.layout import ShardError
from mmtrain.data.shards.pack import pack_split, parse_size
from mmtrain.data.skips import SkippedSample
from mmtrain.engine.callbacks.faults import compare_runs, kill_overrides


NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MODALITIES = ["video", "audio", "text"]


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo set packed by the CLI (shards of ~64 kB: several per split); its folder's parent holds data/."""
    work = tmp_path_factory.mktemp("packed")
    done = run_mmtrain("data", "pack", "experiment=demo", "data.prepare.size=tiny", "--out", str(work / "shards"),
                       "--shard-size", "64KB", cwd=work, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "train │" in done.stdout and "shards.source=" in done.stdout
    return work / "shards"


def direct(packed: Path, split: str) -> Mp4LabelJsonDataset:
    root = packed.parent / "data" / "spoken_digits"
    return Mp4LabelJsonDataset(video_dir=str(root / "videos" / split), label_dir=str(root / "labels" / split),
                               label_names=NAMES, num_frames=4, modalities=MODALITIES)


def same_samples(first: object, second: object) -> None:
    assert len(first) == len(second)  # type: ignore[arg-type]
    for index in range(len(first)):  # type: ignore[arg-type]
        a, b = first[index], second[index]  # type: ignore[index]
        assert (a["id"], a["label"], a["text"]) == (b["id"], b["label"], b["text"])
        assert np.array_equal(a["video"], b["video"]) and np.array_equal(a["audio"], b["audio"])


def test_packed_samples_are_the_source_samples_in_webdataset_tars(packed: Path) -> None:
    import webdataset

    shards = ShardsDataset(source=str(packed), split="train", modalities=MODALITIES, num_frames=4)
    assert shards.label_names == NAMES and len(shards.shards) > 1
    same_samples(direct(packed, "train"), shards)
    tars = sorted(str(p) for p in (packed / "train").glob("*.tar"))
    read = list(webdataset.WebDataset(tars, shardshuffle=False))
    assert [json.loads(s["json"])["id"] for s in read] == shards.ids  # any WebDataset reader takes them
    assert all(sorted(s) == ["__key__", "__local_path__", "__url__", "json", "video.mp4"] for s in read)
    import datasets  # Hugging Face's webdataset loader too (it wants the same members in every sample)

    streamed = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train", streaming=True)
    assert sum(1 for _ in streamed.decode(False)) == len(shards)  # bytes: its video decoding needs torchcodec


def test_shared_media_store_a_file_once_per_shard_and_read_the_same(packed: Path, tmp_path: Path) -> None:
    source = direct(packed, "val")
    sizes = {}
    for share in (False, True):
        out = tmp_path / f"share_{share}"
        pack_split(source, out / "val", shard_bytes=parse_size("1MB"), num_workers=0, ledger=tmp_path / "skipped.jsonl",
                   split="val", source={}, share_media=share)
        sizes[share] = sum(p.stat().st_size for p in (out / "val").glob("*.tar"))
        same_samples(source, ShardsDataset(source=str(out), split="val", modalities=MODALITIES, num_frames=4))
    assert sizes[True] < sizes[False] / 2  # 2 segments of each tiny-demo mp4


def test_http_and_s3_serve_the_same_samples(packed: Path) -> None:
    local = ShardsDataset(source=str(packed), split="val", modalities=MODALITIES, num_frames=4)
    with http_server(packed) as url:
        same_samples(local, ShardsDataset(source=url, split="val", modalities=MODALITIES, num_frames=4))
        with pytest.raises(ShardError, match=r"shards http://127.0.0.1:\d+/nope: shards.json not found"):
            ShardsDataset(source=url, split="nope", modalities=MODALITIES)
    with s3_server(packed) as endpoint:
        remote = ShardsDataset(source="s3://data", split="val", modalities=MODALITIES, num_frames=4,
                               storage_options={"endpoint_url": endpoint})
        same_samples(local, remote)
    with pytest.raises(ShardError, match=r"http://127.0.0.1:9/val: reading shards.json failed 3 times"):
        ShardsDataset(source="http://127.0.0.1:9", split="val", modalities=MODALITIES)  # nothing listens there


def damaged(packed: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(packed / "val", copy / "val")
    return copy


def test_damage_is_named_by_shard_and_sample(packed: Path, tmp_path: Path) -> None:
    copy = damaged(packed, tmp_path)
    data = ShardsDataset(source=str(copy), split="val", modalities=MODALITIES)
    key, sample_id, offset, length, _ = data.index(0)[1]
    shard = copy / "val" / "00000.tar"
    raw = bytearray(shard.read_bytes())
    raw[offset + length - 600] ^= 0xFF  # inside the sample's last member
    shard.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=rf"00000.tar: sample {sample_id} fails its sha256"):
        data[1]
    with open(shard, "r+b") as handle:
        handle.truncate(offset + 10)
    with pytest.raises(ShardError, match=r"00000.tar ends before byte .*a truncated shard"):
        data[int(data.starts[0]) + len(data.index(0)) - 1]
    (copy / "val" / "00001.idx.json").write_text("[]")
    with pytest.raises(ShardError, match=r"00001.idx.json: sha256 differs from shards.json"):
        data[int(data.starts[1])]


def test_a_hostile_or_mismatched_root_is_refused(packed: Path, tmp_path: Path) -> None:
    copy = damaged(packed, tmp_path)
    root_file = copy / "val" / "shards.json"
    root = json.loads(root_file.read_text())
    with pytest.raises(ShardError, match=r"pinned"):
        ShardsDataset(source=str(copy), split="val", modalities=MODALITIES, sha256="0" * 64)
    with pytest.raises(ValueError, match=r"modalities \['image'\] were not packed"):
        ShardsDataset(source=str(copy), split="val", modalities=["image"])
    with pytest.raises(ValueError, match=r"label_names \['a', 'b'\] differ from the packed"):
        ShardsDataset(source=str(copy), split="val", modalities=MODALITIES, label_names=["a", "b"])
    root["shards"][0]["name"] = "../../outside.tar"
    root_file.write_text(json.dumps(root))
    with pytest.raises(ShardError, match=r"shards\[0\]: '../../outside.tar' is not a plain file name"):
        ShardsDataset(source=str(copy), split="val", modalities=MODALITIES)
    root_file.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ShardError, match=r"not an mmtrain shards root"):
        ShardsDataset(source=str(copy), split="val", modalities=MODALITIES)
    with pytest.raises(ShardError, match=r"no such folder"):
        ShardsDataset(source=str(tmp_path / "absent"), split="val", modalities=MODALITIES)


def test_an_undecodable_sample_goes_to_the_ledger_not_into_a_shard(clip_source: Path, tmp_path: Path) -> None:
    videos, labels = tmp_path / "videos", tmp_path / "labels"
    videos.mkdir()
    labels.mkdir()
    shutil.copy(clip_source, videos / "good.mp4")
    (videos / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    for name in ("good", "bad"):
        (labels / f"{name}.json").write_text(json.dumps({"segments": [
            {"start": 0.0, "end": 1.0, "text": "a", "label": "x"}, {"start": 1.0, "end": 2.0, "text": "b", "label": "y"}]}))
    source = Mp4LabelJsonDataset(video_dir=str(videos), label_dir=str(labels), label_names=["x", "y"],
                                 num_frames=3, modalities=["video", "audio"])
    ledger = tmp_path / "out" / "skipped.jsonl"
    counts = pack_split(source, tmp_path / "out" / "train", shard_bytes=parse_size("1MB"), num_workers=0,
                        ledger=ledger, split="train", source={})
    assert counts["samples"] == 2 and counts["skipped"] == 2 and counts["shards"] == 1
    assert sorted(json.loads(line)["id"] for line in ledger.read_text().splitlines()) == ["bad/0", "bad/1"]
    shards = ShardsDataset(source=str(tmp_path / "out"), split="train", modalities=["video", "audio"], num_frames=3)
    assert shards.ids == ["good/0", "good/1"] and [shards[i]["label"] for i in (0, 1)] == [0, 1]
    assert np.array_equal(shards[1]["video"], source[3]["video"])  # bad.mp4 sorts first: good/1 is its 4th
    assert not isinstance(shards[0], SkippedSample)


class Interrupted(Mp4LabelJsonDataset):
    """A copy of a source whose sample ``stop`` fails (a crash mid-pack) until ``stop`` is cleared."""

    def __init__(self, source: Mp4LabelJsonDataset, stop: int | None) -> None:
        self.__dict__.update(vars(source))
        self.stop = stop

    def __getitem__(self, index: int) -> object:
        if index == self.stop:
            raise RuntimeError("the machine went away")
        return super().__getitem__(index)


def test_an_interrupted_pack_goes_on_from_its_last_finished_shard(packed: Path, tmp_path: Path) -> None:
    source = direct(packed, "val")
    options = {"shard_bytes": parse_size("40KB"), "num_workers": 0, "split": "val", "source": {}}
    pack_split(source, tmp_path / "clean" / "val", ledger=tmp_path / "clean.jsonl", **options)
    crashing = Interrupted(source, stop=6)
    with pytest.raises(RuntimeError, match="went away"):
        pack_split(crashing, tmp_path / "out" / "val", ledger=tmp_path / "out.jsonl", **options)
    staging = tmp_path / "out" / ".val.packing"
    assert not (tmp_path / "out" / "val").exists() and json.loads((staging / "progress.json").read_text())["shards"]
    crashing.stop = None
    again = pack_split(crashing, tmp_path / "out" / "val", ledger=tmp_path / "out.jsonl", **options)
    assert 0 < again["continued_from"] <= 6 and not staging.exists()
    for name in sorted(p.name for p in (tmp_path / "clean" / "val").iterdir()):
        assert (tmp_path / "out" / "val" / name).read_bytes() == (tmp_path / "clean" / "val" / name).read_bytes(), name
    kept = pack_split(crashing, tmp_path / "out" / "val", ledger=tmp_path / "out.jsonl", **options)
    assert kept["continued_from"] is None and kept["samples"] == len(source)  # packed before: kept as it is


@pytest.mark.parametrize("text, size", [("256MB", 256 * 2**20), ("1.5GB", int(1.5 * 2**30)), ("64KiB", 65536),
                                        ("1000", 1000)])
def test_shard_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_shard_size_is_named() -> None:
    with pytest.raises(ValueError, match=r"--shard-size '12 parsecs'"):
        parse_size("12 parsecs")


COMMAND = ["experiment=demo", "data.prepare.size=tiny", "data.num_workers=2", "trainer.max_epochs=2", "data.batch_size=4",
           "callbacks.resume_checkpoint.every_n_train_steps=2", "evaluate_unimodal=false", "callbacks.progress=null"]


@pytest.mark.long  # the README's second test command: the first stays under 15 minutes
def test_the_demo_from_shards_over_http_killed_and_resumed_ends_as_from_its_files(packed: Path, tmp_path: Path) -> None:
    work = packed.parent  # its data/ holds the files the shards were packed from
    whole = run_mmtrain("train", *COMMAND, f"run_dir={tmp_path / 'whole'}", cwd=work, timeout=300)
    assert whole.returncode == 0, whole.stdout[-2000:] + whole.stderr[-3000:]
    killed = tmp_path / "killed"
    with http_server(packed) as url:
        remote = [*COMMAND, f"shards.source={url}"]
        code = killed_ddp_run(*remote, *kill_overrides(5), f"run_dir={killed}", cwd=work, name="shards_http")
        assert code == SIGKILLED  # after step 5 of 8: mid epoch 2 (4 steps an epoch), 2 workers prefetching
        resumed = run_mmtrain("train", *remote, f"resume={killed}", cwd=work, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert compare_runs(tmp_path / "whole", killed) == []  # weights, optimizer state, every step's loss


def test_fields_of_a_packed_sample_cannot_pose_as_media_or_its_id(tmp_path: Path) -> None:
    from mmtrain.data.shards.writer import PackItem, SplitWriter

    with SplitWriter(tmp_path / "odd" / "train", shard_bytes=2**20, label_names=[], modalities=["text"],
                     source={}, source_samples=1) as writer:
        writer.add(PackItem(id="real", fields={"text": "hi", "video": "/etc/passwd", "id": "forged"}), 0, 0)
        writer.close()
    sample = ShardsDataset(source=str(tmp_path / "odd"), split="train", modalities=["text"])[0]
    assert sample == {"id": "real", "text": "hi"}


def test_a_stream_is_refused_with_the_way_to_pack_its_files(tmp_path: Path) -> None:
    from mmtrain.data.formats.parquet import ParquetDataset

    from .test_format_parquet import _write

    stream = ParquetDataset(files=str(_write(tmp_path / "rows.parquet", 3)))
    with pytest.raises(ValueError, match=r"ParquetDataset cannot be packed: .*data.train.builder=parquet"):
        pack_split(stream, tmp_path / "out" / "train", shard_bytes=2**20, num_workers=0,
                   ledger=tmp_path / "skipped.jsonl", split="train", source={})


def test_opening_shards_for_a_run_reads_no_shard_index(packed: Path) -> None:
    from mmtrain.data.resumable import dataset_fingerprint

    data = ShardsDataset(source=str(packed), split="train", modalities=MODALITIES)
    first = dataset_fingerprint(data)
    assert not data._indexes  # the resume fingerprint is the root's sha256, not every index read at start-up
    assert first == dataset_fingerprint(ShardsDataset(source=str(packed), split="train", modalities=["video"]))
