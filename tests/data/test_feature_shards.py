"""Feature shards on disk: written in shards that roll together, read back by id, damage detected, an
interrupted write goes on after its last finished shard."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch

from mmtrain.data.feature_entries import read_entry, write_entry, entry_name
from mmtrain.data.feature_shards import FeatureShards, FeatureShardWriter, lookup_entry


def entry(seed: int, n: int = 3, dim: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"tokens": torch.randn(n, dim, generator=g), "mask": torch.ones(n, dtype=torch.bool),
            "pooled": torch.randn(dim, generator=g), "length": n + 1, "input_length": None if seed % 2 else n + 1}


def write(folders: dict[str, Path], samples: int, batch: int = 2, shard_bytes: int = 200,
          facts: dict | None = None, stop_after: int | None = None) -> FeatureShardWriter:
    writer = FeatureShardWriter(folders, part=0, parts=1, shard_bytes=shard_bytes, facts=facts or {"batch_size": batch})
    start = writer.resume() or 0
    for begin in range(start, samples, batch):
        if stop_after is not None and begin >= stop_after:
            return writer
        ids = [f"clip/{i}" for i in range(begin, min(begin + batch, samples))]
        rows = {slot: [(i, entry(int(i.split("/")[1]) + 100 * k)) for i in ids] for k, slot in enumerate(folders)}
        writer.add(rows, start=begin, end=begin + len(ids))
    writer.flush(samples)
    return writer


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("tokens", "mask", "pooled")) and \
        (a["length"], a["input_length"]) == (b["length"], b["input_length"])


def test_entries_round_trip_by_id_across_shards(tmp_path: Path) -> None:
    folders = {"video": tmp_path / "video", "text": tmp_path / "text"}
    writer = write(folders, samples=9)
    assert writer.written["shards"] >= 3  # ~200 bytes each: several batches per shard, both slots roll together
    assert sorted(p.name for p in folders["video"].glob("*.json")) == sorted(p.name for p in folders["text"].glob("*.json"))
    store = FeatureShards(folders["text"])
    assert len(store) == 9
    for i in range(9):
        assert same(store.get(f"clip/{i}"), entry(i + 100))
    assert store.get("clip/9") is None
    clone = pickle.loads(pickle.dumps(store))  # into a DataLoader worker: opens its own shards
    assert same(clone.get("clip/4"), entry(104))
    # the cache's per-sample files are the fallback for ids the shards lack
    (tmp_path / "cache").mkdir()
    write_entry(tmp_path / "cache" / entry_name("clip/9"), "clip/9", "text", "k", 2, entry(7))
    assert same(lookup_entry("clip/9", tmp_path / "cache", store), entry(7))
    assert same(lookup_entry("clip/3", tmp_path / "cache", store), entry(103))
    assert read_entry(tmp_path / "cache" / entry_name("clip/3"), "clip/3") is None


def test_damaged_entry_and_truncated_shard_are_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "video"
    write({"video": folder}, samples=6)
    sidecars = sorted(folder.glob("*.json"))
    first = json.loads(sidecars[0].read_text())
    shard = folder / first["file"]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x40  # a flipped bit in the last tensor of the shard's first entries
    shard.write_bytes(bytes(data))
    last = folder / json.loads(sidecars[-1].read_text())["file"]
    last.write_bytes(last.read_bytes()[:-10])
    with caplog.at_level(logging.WARNING, logger="mmtrain.data.feature_shards"):
        store = FeatureShards(folder)
        found = {i: store.get(f"clip/{i}") for i in range(6)}
    damaged = [i for i, e in found.items() if e is None]
    assert damaged and set(json.loads(sidecars[-1].read_text())["ids"]) <= {f"clip/{i}" for i in damaged}
    assert "truncated or replaced" in caplog.text and "checksum mismatch" in caplog.text
    assert all(same(e, entry(i)) for i, e in found.items() if e is not None)


def test_interrupted_write_goes_on_after_its_last_finished_shard(tmp_path: Path) -> None:
    whole = {"video": tmp_path / "whole" / "video", "text": tmp_path / "whole" / "text"}
    write(whole, samples=10)
    cut = {"video": tmp_path / "cut" / "video", "text": tmp_path / "cut" / "text"}
    write(cut, samples=10, stop_after=8)  # killed before its last batches: the pending shard is never written
    stems = sorted(p.stem for p in cut["text"].glob("*.json"))
    (cut["video"] / f"{stems[-1]}.json").unlink()  # and killed between one slot's shard and the next's
    writer = FeatureShardWriter(cut, part=0, parts=1, shard_bytes=200, facts={"batch_size": 2})
    at = writer.resume()
    assert at is not None and 0 < at < 10 and at % 2 == 0
    assert not (cut["text"] / f"{stems[-1]}.json").exists()  # unfinished in one slot: rewritten in all
    write(cut, samples=10)
    for slot in whole:
        names = sorted(p.name for p in whole[slot].iterdir())
        assert names == sorted(p.name for p in cut[slot].iterdir())
        assert all((whole[slot] / n).read_bytes() == (cut[slot] / n).read_bytes() for n in names)
    with pytest.raises(ValueError, match="batch_size"):  # other settings: their features would differ
        FeatureShardWriter(cut, part=0, parts=1, shard_bytes=200, facts={"batch_size": 4}).resume()


def test_parts_written_apart_are_read_together(tmp_path: Path) -> None:
    """``--part 0/2`` and ``--part 1/2`` (two processes, e.g. two GPUs) write into the same folder."""
    folder = tmp_path / "audio"
    for part, (lo, hi) in enumerate(((0, 5), (5, 9))):
        writer = FeatureShardWriter({"audio": folder}, part=part, parts=2, shard_bytes=10_000,
                                    facts={"batch_size": 2, "first": lo, "end": hi})
        assert writer.resume() is None
        writer.add({"audio": [(f"clip/{i}", entry(i)) for i in range(lo, hi)]}, start=lo, end=hi)
        writer.flush(hi)
    assert sorted(p.name for p in folder.glob("*.json")) == ["part000of002-00000.json", "part001of002-00000.json"]
    store = FeatureShards(folder)
    assert len(store) == 9 and all(same(store.get(f"clip/{i}"), entry(i)) for i in range(9))
    with pytest.raises(ValueError, match="--part 0/2"):  # the same folder, split another way
        FeatureShardWriter({"audio": folder}, part=0, parts=3, shard_bytes=10_000, facts={"batch_size": 2}).resume()
