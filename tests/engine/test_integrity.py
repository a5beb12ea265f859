"""Every artifact mmtrain reads is verified: export manifests, signatures, checkpoint steps, lost manifests.

Real files throughout: a tiny real model ``save_pretrained``, real ``torch.save`` checkpoints through
``AtomicCheckpointIO``, real byte flips and truncations.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import mmtrain.models  # noqa: F401  (registers the Auto classes)
from _models import tiny_export
from mmtrain.core.integrity import MANIFEST, SIGNING_KEY_ENV, ArtifactDamaged, SignatureMismatch, update_manifest
from mmtrain.engine.callbacks.checkpoint_io import (
    MANIFEST_NAME,
    AtomicCheckpointIO,
    CheckpointCorrupt,
    UnsafeCheckpoint,
    read_manifest,
)
from mmtrain.engine.callbacks.checkpointing import resume_point
from mmtrain.engine.export import find_export

from .test_checkpoint_io import state


def flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """A real export folder: a tiny model's save_pretrained plus a training config, manifest over all."""
    folder = tiny_export(tmp_path / "export")
    (folder / "training_config.yaml").write_text("data: {batch_size: 2}\n")
    update_manifest(folder)
    return folder


def test_export_lists_every_file_and_loads(export: Path) -> None:
    files = json.loads((export / MANIFEST).read_text())["files"]
    assert set(files) == {"config.json", "model.safetensors", "training_config.yaml"}
    assert AutoModel.from_pretrained(str(export)).config.id2label == {0: "a", 1: "b"}
    assert find_export(export) == export


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_weights_are_refused_by_every_reader(export: Path, damage: str) -> None:
    weights = export / "model.safetensors"
    if damage == "flip":
        flip(weights, weights.stat().st_size - 5)  # inside a tensor: safetensors itself would load it
    else:
        weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ArtifactDamaged, match="model.safetensors is damaged"):
        AutoModel.from_pretrained(str(export))
    with pytest.raises(ArtifactDamaged, match="model.safetensors is damaged"):
        find_export(export)  # eval, predict and model.init go through here
    if damage == "flip":  # the user's explicit opt-out loads what is there
        assert AutoModel.from_pretrained(str(export), verify=False) is not None


def test_damaged_training_config_and_missing_manifest_are_named(export: Path) -> None:
    flip(export / "training_config.yaml", 0)
    with pytest.raises(ArtifactDamaged, match="training_config.yaml is damaged"):
        find_export(export)
    (export / MANIFEST).unlink()
    with pytest.raises(ArtifactDamaged, match=f"has no {MANIFEST}"):
        AutoModel.from_pretrained(str(export))


def test_signed_export_refuses_a_rewritten_manifest_and_a_wrong_key(export: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, "team-secret")
    update_manifest(export)
    assert "hmac_sha256" in json.loads((export / MANIFEST).read_text())
    assert find_export(export) == export
    # Tampering: change the weights and write their new checksum into the manifest, keep the signature.
    weights = export / "model.safetensors"
    flip(weights, weights.stat().st_size - 5)
    manifest = json.loads((export / MANIFEST).read_text())
    from mmtrain.core.integrity import sha256_file

    manifest["files"]["model.safetensors"]["sha256"] = sha256_file(weights)
    (export / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SignatureMismatch, match="signature does not match"):
        AutoModel.from_pretrained(str(export))
    monkeypatch.setenv(SIGNING_KEY_ENV, "another-key")
    update_manifest(export)  # signed with another key
    monkeypatch.setenv(SIGNING_KEY_ENV, "team-secret")
    with pytest.raises(SignatureMismatch):
        find_export(export)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    update_manifest(export)  # unsigned
    monkeypatch.setenv(SIGNING_KEY_ENV, "team-secret")
    with pytest.raises(SignatureMismatch, match="not signed"):
        find_export(export)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    assert find_export(export) == export  # without a key: checksums only


# -- checkpoints --------------------------------------------------------------------------------


@pytest.fixture
def ckdir(tmp_path: Path) -> Path:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def test_manifest_step_must_match_the_checkpoints_own(ckdir: Path) -> None:
    io = AtomicCheckpointIO()
    io.save_checkpoint(state(8), ckdir / "last-step8.ckpt")
    manifest = json.loads((ckdir / MANIFEST_NAME).read_text())
    manifest["checkpoints"]["last-step8.ckpt"]["global_step"] = 12
    (ckdir / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointCorrupt, match="holds global_step 8, its manifest entry says 12"):
        io.load_checkpoint(ckdir / "last-step8.ckpt")


def test_signed_checkpoint_manifest_refuses_tampering(ckdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, "k")
    io = AtomicCheckpointIO()
    io.save_checkpoint(state(4), ckdir / "last-step4.ckpt")
    assert io.load_checkpoint(ckdir / "last-step4.ckpt")["global_step"] == 4
    manifest = json.loads((ckdir / MANIFEST_NAME).read_text())
    manifest["checkpoints"]["last-step4.ckpt"]["epoch"] = 3
    (ckdir / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(SignatureMismatch):
        io.load_checkpoint(ckdir / "last-step4.ckpt")


def test_lost_manifest_is_rebuilt_from_the_files_that_verify(ckdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    io = AtomicCheckpointIO()
    for step in (4, 8, 12):
        io.save_checkpoint(state(step, size=4096), ckdir / f"last-step{step}.ckpt")
    (ckdir / "last.ckpt").symlink_to("last-step12.ckpt")
    flip(ckdir / "last-step12.ckpt", 2000)  # inside a tensor record: the newest is damaged, its zip CRC tells
    (ckdir / MANIFEST_NAME).unlink()
    with caplog.at_level(logging.WARNING):
        chosen = resume_point(ckdir.parent)
    assert chosen == ckdir / "last-step8.ckpt"  # never a silent restart from step 0
    assert set(read_manifest(ckdir)["checkpoints"]) == {"last-step4.ckpt", "last-step8.ckpt"}
    assert "last-step12.ckpt is not listed again" in caplog.text and "rebuilt it" in caplog.text
    assert io.load_checkpoint(chosen)["global_step"] == 8


def test_lost_manifest_with_nothing_intact_or_a_signing_key_is_refused(ckdir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    io.save_checkpoint(state(4, size=4096), ckdir / "last-step4.ckpt")
    (ckdir / MANIFEST_NAME).unlink()
    monkeypatch.setenv(SIGNING_KEY_ENV, "k")
    with pytest.raises(FileNotFoundError, match="cannot be authenticated"):
        resume_point(ckdir.parent)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    flip(ckdir / "last-step4.ckpt", 2000)
    with pytest.raises(FileNotFoundError, match="none of .* verifies on its own"):
        resume_point(ckdir.parent)


def _listed(io: AtomicCheckpointIO, ckdir: Path, name: str, payload: bytes) -> Path:
    """A file with ``payload`` listed in the manifest with its true checksum (only its content is bad)."""
    io.save_checkpoint(state(1), ckdir / name)
    (ckdir / name).write_bytes(payload)
    io.relist(ckdir / name, {"global_step": None})
    return ckdir / name


def test_export_of_pickle_truncated_or_unlisted_checkpoints_names_the_problem(ckdir: Path, tmp_path: Path) -> None:
    from mmtrain.app.commands.evaluate import export_checkpoint

    io = AtomicCheckpointIO()

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = _listed(io, ckdir, "evil.ckpt", pickle.dumps({"global_step": 1, "x": Payload()}))
    with pytest.raises(UnsafeCheckpoint, match="evil.ckpt holds objects"):
        export_checkpoint(evil, tmp_path / "out")
    io.save_checkpoint(state(2), ckdir / "cut.ckpt")
    (ckdir / "cut.ckpt").write_bytes((ckdir / "cut.ckpt").read_bytes()[:200])
    with pytest.raises(CheckpointCorrupt, match="cut.ckpt is damaged \\(truncated"):
        export_checkpoint(ckdir / "cut.ckpt", tmp_path / "out")
    torch.save(state(3), ckdir / "stray.ckpt")
    with pytest.raises(CheckpointCorrupt, match="stray.ckpt is damaged \\(missing from"):
        export_checkpoint(ckdir / "stray.ckpt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_manifest_covers_its_subfolders_but_not_those_with_their_own(tmp_path: Path) -> None:
    (tmp_path / "text_tokenizer").mkdir()
    (tmp_path / "text_tokenizer" / "tokenizer.json").write_text("{}")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "weights.bin").write_bytes(b"x")
    update_manifest(tmp_path / "adapter")  # a subfolder with its own manifest (an export's adapter/, a VLM's hf/)
    update_manifest(tmp_path)
    listed = json.loads((tmp_path / MANIFEST).read_text())["files"]
    assert sorted(listed) == ["config.json", "text_tokenizer/tokenizer.json"]
    (tmp_path / "text_tokenizer" / "tokenizer.json").write_text('{"tampered": 1}')
    with pytest.raises(ArtifactDamaged, match="text_tokenizer/tokenizer.json is damaged"):
        find_export(tmp_path)
