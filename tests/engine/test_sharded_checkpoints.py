"""Sharded (DCP) checkpoint folders in the checkpoint manifest (mmtrain.engine.sharded_checkpoints): committed,
verified file by file, refused when damaged or when their pickled metadata names anything but DCP's classes,
consolidated into one full state, removed by rotation. Real DCP folders written by torch in this process;
2-rank FSDP2 runs that write, kill, resume and export them are in tests/integration/test_ddp.py."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from mmtrain.engine.callbacks.checkpoint_io import (AtomicCheckpointIO, CheckpointCorrupt, UnsafeCheckpoint,
                                                    load_verified, read_manifest)
from mmtrain.engine.callbacks.checkpoint_manifest import find_resume_checkpoint
from mmtrain.engine.sharded_checkpoints import META_NAME, hash_files


def write_folder(checkpoints: Path, name: str, step: int) -> Path:
    """A sharded checkpoint as FSDP2 writes one (DCP shards + .metadata + Lightning's meta.pt), committed."""
    folder = checkpoints / f".{name}.tmp-in-test"
    folder.mkdir(parents=True)
    torch.manual_seed(step)
    state = {"state_dict": {"model.w": torch.randn(4, 3), "model.b": torch.randn(3)},
             "optimizer_0": {"state": {"model.w": {"step": torch.tensor(float(step))}}, "param_groups": [{"lr": 0.1}]}}
    dcp.save(state, checkpoint_id=folder)  # no process group: one process writes every shard
    meta = {"global_step": step, "epoch": 0, "loops": {}}
    torch.save(meta, folder / META_NAME)
    AtomicCheckpointIO().commit_folder(folder, checkpoints / name, hash_files(folder), meta)
    return checkpoints / name


def test_a_committed_folder_is_listed_file_by_file_and_consolidates_into_one_state(tmp_path: Path) -> None:
    path = write_folder(tmp_path, "last-step0000003.ckpt", 3)
    entry = read_manifest(tmp_path)["checkpoints"]["last-step0000003.ckpt"]
    assert set(entry["files"]) == {".metadata", "__0_0.distcp", META_NAME} and entry["global_step"] == 3
    assert entry["bytes"] == sum(f.stat().st_size for f in path.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp-in-test")]  # renamed into place
    state = load_verified(path)
    torch.manual_seed(3)
    assert torch.equal(state["state_dict"]["model.w"], torch.randn(4, 3)) and state["global_step"] == 3
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == 0.1
    assert find_resume_checkpoint(tmp_path) == path


@pytest.mark.parametrize("damage, reason", [
    (lambda p: (p / "__0_0.distcp").unlink(), r"__0_0\.distcp: missing"),
    (lambda p: (p / "stray.bin").write_bytes(b"x"), r"stray\.bin: not listed"),
    (lambda p: os.truncate(p / "__0_0.distcp", 10), r"__0_0\.distcp: 10 bytes, listed"),
    (lambda p: _flip_last_byte(p / "__0_0.distcp"), r"__0_0\.distcp: checksum mismatch"),
])
def test_a_damaged_folder_is_refused_naming_the_file_and_resume_falls_back(tmp_path: Path, damage, reason) -> None:
    older = write_folder(tmp_path, "last-step0000003.ckpt", 3)
    newer = write_folder(tmp_path, "last-step0000006.ckpt", 6)
    damage(newer)
    with pytest.raises(CheckpointCorrupt, match=reason):
        load_verified(newer)
    assert find_resume_checkpoint(tmp_path) == older  # the damaged newer one is passed over


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


class _Hostile:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_metadata_naming_anything_else_is_refused_before_dcp_unpickles_it(tmp_path: Path) -> None:
    # a folder whose .metadata was replaced and re-listed (a manifest rewritten without MMTRAIN_SIGNING_KEY)
    marker = tmp_path / "EXECUTED"
    path = write_folder(tmp_path / "checkpoints", "last-step0000003.ckpt", 3)
    rewritten = path.rename(path.with_name(".rewritten.tmp-in-test"))
    (rewritten / ".metadata").write_bytes(pickle.dumps(_Hostile(str(marker))))
    AtomicCheckpointIO().commit_folder(rewritten, path, hash_files(rewritten), {"global_step": 3, "epoch": 0})
    with pytest.raises(UnsafeCheckpoint, match=r"posix\.system is not part of a checkpoint's metadata"):
        load_verified(path)
    assert not marker.exists()


def test_rotation_removes_a_folder_and_its_entry(tmp_path: Path) -> None:
    path = write_folder(tmp_path, "last-step0000003.ckpt", 3)
    AtomicCheckpointIO().remove_checkpoint(path)
    assert not path.exists() and read_manifest(tmp_path)["checkpoints"] == {}


def test_a_deepspeed_file_naming_anything_beyond_its_state_classes_is_refused_before_deepspeed_loads_it(
        tmp_path: Path) -> None:
    # DeepSpeed unpickles its files in full; each must first load weights-only, admitting only its state classes
    marker = tmp_path / "EXECUTED"
    folder = tmp_path / "checkpoints" / ".last-step0000002.ckpt.tmp-in-test"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "latest").write_text("checkpoint")
    payload = {"module": {"w": torch.ones(2)}, "x": _Hostile(str(marker))}
    torch.save(payload, folder / "checkpoint" / "mp_rank_00_model_states.pt")
    path = tmp_path / "checkpoints" / "last-step0000002.ckpt"
    AtomicCheckpointIO().commit_folder(folder, path, hash_files(folder), {"global_step": 2, "epoch": 0})
    assert set(read_manifest(path.parent)["checkpoints"][path.name]["files"]) == {
        "latest", "checkpoint/mp_rank_00_model_states.pt"}  # files in subfolders are listed too
    with pytest.raises(UnsafeCheckpoint, match=r"holds objects beyond DeepSpeed's checkpoint state"):
        load_verified(path)
    assert not marker.exists()
