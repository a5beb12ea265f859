"""Reading a checkpoint folder's manifest and verifying checkpoints against it (size, then sha256, nothing
unpickled), and choosing the one a resume starts from. Written by :mod:`mmtrain.engine.callbacks.checkpoint_io`."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from mmtrain.core.integrity import SIGNATURE_KEY, check_signature

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "mmtrain-checkpoints"
MANIFEST_VERSION = 1


class CheckpointCorrupt(ValueError):
    """A checkpoint does not match its manifest entry (or has none); it was not unpickled."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"checkpoint {path} is damaged ({reason}); it was not loaded.")


def sha256_handle(handle: BinaryIO) -> str:
    """sha256 of the rest of an open file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: handle.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """``directory``'s manifest ``{"checkpoints": {file name: entry}, ...}``; FileNotFoundError if none,
    CheckpointCorrupt if unreadable."""
    path = Path(directory) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {directory}: no checkpoint was written there by "
                                "mmtrain's AtomicCheckpointIO") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointCorrupt(path, f"unreadable manifest: {err}") from err
    if not isinstance(manifest, dict) or [manifest.get("format"), manifest.get("version")] != [MANIFEST_FORMAT,
                                                                                              MANIFEST_VERSION]:
        raise CheckpointCorrupt(path, f"not a version {MANIFEST_VERSION} {MANIFEST_FORMAT} manifest")
    check_signature(manifest.get("checkpoints"), manifest.get(SIGNATURE_KEY), str(path))
    return manifest


def _records(entry: dict[str, Any]) -> list[dict[str, Any]]:  # committed + pending (a save cut after its rename)
    return [r for r in (entry if "sha256" in entry else None, entry.get("pending")) if r]


#: The checkpoint a resume chose, by file identity (device, inode, size, mtime), with the sha256 it verified: its
#: load uses that once instead of hashing the file again (one read of a 14 GB checkpoint, not two). Checkpoints are
#: written by rename (a new inode), so a rewritten file never matches.
_CHOSEN: dict[tuple[int, int, int, int], str] = {}


def verify_handle(path: Path, entry: dict[str, Any] | None, handle: BinaryIO | None,
                   remember: bool = False) -> dict[str, Any]:
    """The manifest record ``handle``'s content matches, else :class:`CheckpointCorrupt`. ``remember``: the next
    verification of this same file takes its hash from this one (see ``_CHOSEN``)."""
    if entry is None:
        raise CheckpointCorrupt(path, f"missing from {path.parent / MANIFEST_NAME}")
    if entry.get("deleting"):
        raise CheckpointCorrupt(path, "marked for deletion by an interrupted removal")
    if handle is None:
        raise CheckpointCorrupt(path, "file missing" + ("" if "sha256" in entry else ": its save never completed"))
    stat = os.fstat(handle.fileno())
    records, size = _records(entry), stat.st_size
    sized = [r for r in records if r["bytes"] == size]
    if not sized:
        expected = records[0]["bytes"]
        raise CheckpointCorrupt(path, f"{'truncated' if size < expected else 'wrong size'}: "
                                      f"expected {expected} bytes got {size}")
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    digest = _CHOSEN.pop(identity, None) or sha256_handle(handle)
    if remember:
        _CHOSEN.clear()
        _CHOSEN[identity] = digest
    for record in sized:
        if record["sha256"] == digest:
            return record
    raise CheckpointCorrupt(path, f"checksum mismatch: sha256 {digest[:12]}..., manifest {sized[0]['sha256'][:12]}...")


def open_checkpoint(path: Path) -> BinaryIO | None:
    """``path`` opened for reading (``None`` when missing): one open file, one inode, for verify and load."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        return None


def verify_checkpoint(path: str | Path, *, remember: bool = False) -> None:
    """Check ``path`` against its folder's manifest (size, then sha256); nothing is unpickled.
    Raises CheckpointCorrupt (not listed, missing, truncated, checksum) or FileNotFoundError (no manifest).
    ``remember``: the load that follows need not hash the file again (:func:`find_resume_checkpoint`)."""
    path = Path(path)
    entry = read_manifest(path.parent)["checkpoints"].get(path.name)
    if path.is_dir():
        from mmtrain.engine.sharded_checkpoints import verify_folder

        verify_folder(path, entry)
        return
    handle = open_checkpoint(path)
    with handle or contextlib.nullcontext():
        verify_handle(path, entry, handle, remember)


def find_resume_checkpoint(checkpoint_dir: str | Path, accept: Callable[[str], bool] | None = None) -> Path:
    """The newest checkpoint of ``checkpoint_dir`` (by global_step, then written_at) that verifies, among
    the names ``accept`` takes (all by default); each damaged newer one is logged
    (``checkpoints/last.ckpt is damaged (checksum mismatch...); falling back to checkpoints/...``).
    FileNotFoundError: no manifest, or none verifies."""
    directory = Path(checkpoint_dir)

    entries = {n: e for n, e in read_manifest(directory)["checkpoints"].items() if accept is None or accept(n)}
    newest = lambda e: max((r["global_step"] or 0, r["written_at"], r["seq"]) for r in _records(e))  # noqa: E731
    damaged: list[tuple[str, str]] = []
    for name in sorted((n for n, e in entries.items() if not e.get("deleting") and _records(e)),
                       key=lambda n: newest(entries[n]), reverse=True):
        try:
            verify_checkpoint(directory / name, remember=True)
        except CheckpointCorrupt as err:
            damaged.append((name, err.reason))
            continue
        for bad, reason in damaged:
            log.warning("%s is damaged (%s); falling back to %s", f"{directory.name}/{bad}", reason,
                        f"{directory.name}/{name}")
        return directory / name
    details = "; ".join(f"{n}: {r}" for n, r in damaged) or "the manifest lists none"
    raise FileNotFoundError(f"no valid checkpoint in {directory} ({details}); start the run again without resume.")
