"""Atomic, checksummed checkpoints: ``Trainer(plugins=[AtomicCheckpointIO()])``.

A checkpoint goes to a temporary file in its folder -> fsync -> rename -> fsync the folder; then
``<dir>/manifest.json`` (written the same way) maps its name -> ``{sha256, bytes, global_step, epoch,
written_at, seq}``. Loads check size + checksum *before* unpickling, then unpickle weights-only. A save
records ``pending`` (new size + checksum) before the rename and commits after it, so the file verifies
whichever side of the rename a crash hits; a removal marks the entry ``deleting`` before the unlink.
Only files listed in *this folder's* manifest are ever deleted, never another run's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.pytorch.plugins.io import CheckpointIO

from mmtrain.core.fileio import (RunWriteError, atomic_write_bytes, fsync_dir, remove_path, remove_stale_temporaries,
                                 replace_path, temporary_beside)
from mmtrain.core.integrity import SIGNATURE_KEY, signature, signing_key
from mmtrain.engine.callbacks.checkpoint_manifest import (MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION,
                                                          CheckpointCorrupt, open_checkpoint, read_manifest,
                                                          sha256_handle, verify_handle)

log = logging.getLogger(__name__)



class UnsafeCheckpoint(ValueError):
    """A checkpoint holds objects ``torch.load(weights_only=True)`` refuses (arbitrary pickle)."""


class CheckpointWriteError(RunWriteError):
    """A checkpoint could not be written; the previous checkpoints and the manifest are untouched."""

    def __init__(self, path: str | Path, cause: OSError) -> None:
        super().__init__(path, cause, what="checkpoint",
                         kept="The previous checkpoints and manifest.json were left valid.")


class _HashingWriter:
    """File-like sink for ``torch.save``: hashes and counts what it writes, keeps the real OSError
    (torch's zip writer reports a failed ``write()`` as a RuntimeError without the errno)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.sha, self.size, self.error = handle, hashlib.sha256(), 0, None

    def write(self, data: bytes) -> int:
        try:
            self.handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    flush = staticmethod(lambda: None)  # the file is flushed and fsynced after torch.save returns


class AtomicCheckpointIO(CheckpointIO):
    """Lightning ``CheckpointIO``: atomic writes + manifest with checksums; verified, weights-only loads.
    ``check_loadable``: unpickle each written file weights-only (tensors memory-mapped, not read) and
    refuse to commit one that could not be loaded back."""

    def __init__(self, *, check_loadable: bool = True) -> None:
        self.check_loadable = check_loadable
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def _locked(self, directory: Path) -> Iterator[None]:
        """Threads (AsyncCheckpointIO) and processes writing into ``directory`` take turns on its manifest."""
        with self._lock, open(directory / ".manifest.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _load_for_update(directory: Path) -> dict[str, Any]:
        try:
            return read_manifest(directory)
        except FileNotFoundError:
            pass
        except CheckpointCorrupt as err:
            aside = directory / f"{MANIFEST_NAME}.damaged-{int(time.time())}"
            os.replace(directory / MANIFEST_NAME, aside)
            log.warning("%s; moved it to %s and started a new manifest (the files it listed will not be "
                        "deleted by rotation)", err, aside.name)
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "seq": 0, "checkpoints": {}}

    @staticmethod
    def _write(directory: Path, manifest: dict[str, Any]) -> None:
        key = signing_key()  # MMTRAIN_SIGNING_KEY: HMAC of the file list (mmtrain.core.integrity)
        manifest.pop(SIGNATURE_KEY, None)
        if key is not None:
            manifest[SIGNATURE_KEY] = signature(manifest["checkpoints"], key)
        atomic_write_bytes(directory / MANIFEST_NAME, json.dumps(manifest, indent=1, sort_keys=True).encode(), durable=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """``torch.save`` to a temporary file, fsync, rename, fsync the folder, update the manifest.
        Any OSError (unwritable folder, ENOSPC, EFBIG) -> CheckpointWriteError naming ``path`` and what
        to do; the temporary file is removed, earlier checkpoints stay valid."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = _local_path(path)
        directory, tmp = path.parent, ""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = temporary_beside(path)
            with os.fdopen(fd, "wb") as handle:
                writer = _HashingWriter(handle)
                try:
                    torch.save(checkpoint, writer)
                    handle.flush()
                except RuntimeError as err:
                    if writer.error is not None:
                        raise writer.error from err
                    raise
                os.fsync(handle.fileno())
            if self.check_loadable:  # unpickle as a load will; tensors memory-mapped, not read
                _weights_only_load(tmp, f"refusing to write checkpoint {path}: torch.load(weights_only=True) "
                                   "could not load it back. Something put a non-tensor object (numpy array or "
                                   "scalar, omegaconf container, functools.partial...) in it; store plain "
                                   "Python types or tensors", "cpu", mmap=True)
            record = self._commit(path, tmp, {"sha256": writer.sha.hexdigest(), "bytes": writer.size}, checkpoint)
            tmp = ""
        except CheckpointWriteError:
            raise
        except OSError as err:
            raise CheckpointWriteError(path, err) from err
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        log.debug("saved checkpoint %s (%d bytes, step %s)", path, record["bytes"], record["global_step"])

    def _commit(self, path: Path, written: str | Path, content: dict[str, Any], checkpoint: dict[str, Any]
                ) -> dict[str, Any]:
        """Move the finished temporary ``written`` (a file, or a sharded checkpoint's folder) to ``path`` between a
        ``pending`` and a committed manifest record of its ``content`` (``sha256`` + ``bytes``, and ``files`` for a
        folder); returns the record."""
        directory = path.parent
        with self._locked(directory):
            manifest = self._load_for_update(directory)
            manifest["seq"] = int(manifest.get("seq", 0)) + 1
            record = {**content, "global_step": _int(checkpoint.get("global_step")),
                      "epoch": _int(checkpoint.get("epoch")), "written_at": time.time(), "seq": manifest["seq"]}
            entries = manifest["checkpoints"]
            old = {k: v for k, v in entries.get(path.name, {}).items() if k not in ("deleting", "pending")}
            entries[path.name] = {**old, "pending": record}
            self._write(directory, manifest)
            replace_path(Path(written), path)
            fsync_dir(directory)
            entries[path.name] = record
            for name in [n for n, e in entries.items() if e.get("deleting")]:  # removals a crash cut short
                remove_path(directory / name)
                del entries[name]
            self._write(directory, manifest)
            with contextlib.suppress(OSError):
                remove_stale_temporaries(directory)
        return record

    def commit_folder(self, folder: Path, path: Path, files: dict[str, dict[str, Any]],
                      checkpoint: dict[str, Any]) -> None:
        """List a sharded checkpoint written to the temporary ``folder`` (its ``files``: name -> sha256 + bytes)
        and move it to ``path``: valid only once its manifest entry is committed (global rank 0 alone)."""
        from mmtrain.engine.sharded_checkpoints import folder_record

        try:
            record = self._commit(path, folder, folder_record(files), checkpoint)
        except OSError as err:
            raise CheckpointWriteError(path, err) from err
        log.debug("saved sharded checkpoint %s (%d files, %d bytes, step %s)", path, len(files), record["bytes"],
                  record["global_step"])

    def relist(self, path: Path, state: dict[str, Any]) -> None:
        """List an existing checkpoint file in its folder's manifest as it is now (a lost manifest
        rebuilt: :func:`mmtrain.engine.callbacks.checkpointing.rebuild_manifest`)."""
        with self._locked(path.parent), open(path, "rb") as handle:
            manifest = self._load_for_update(path.parent)
            manifest["seq"] = int(manifest.get("seq", 0)) + 1
            manifest["checkpoints"][path.name] = {
                "sha256": sha256_handle(handle), "bytes": os.fstat(handle.fileno()).st_size,
                "global_step": _int(state.get("global_step")), "epoch": _int(state.get("epoch")),
                "written_at": os.fstat(handle.fileno()).st_mtime, "seq": manifest["seq"]}
            self._write(path.parent, manifest)

    def load_checkpoint(self, path: Any, map_location: Any | None = "cpu", weights_only: bool | None = None
                        ) -> dict[str, Any]:
        """Verify ``path`` against the manifest (CheckpointCorrupt, before anything is unpickled),
        then ``torch.load(..., weights_only=True)`` (UnsafeCheckpoint if it needs arbitrary pickle); the
        loaded ``global_step`` must be the one the manifest recorded."""
        if weights_only is False:
            raise ValueError(f"{type(self).__name__} loads checkpoints with weights_only=True only; "
                             "pass weights_only=True (or leave it unset) to Trainer.fit/validate/test.")
        path = _local_path(path)
        try:
            entry = read_manifest(path.parent)["checkpoints"].get(path.name)
        except FileNotFoundError:
            if not path.exists():
                raise FileNotFoundError(f"Checkpoint file not found: {path}") from None
            raise CheckpointCorrupt(path, f"missing from {path.parent / MANIFEST_NAME}: the folder has no manifest"
                                    ) from None
        if path.is_dir():  # a sharded checkpoint, consolidated into one full state (export, evaluation)
            from mmtrain.engine.sharded_checkpoints import load_folder, verify_folder

            record = verify_folder(path, entry)
            state = load_folder(path)
        else:
            state, record = self._load_file(path, entry, map_location)
        own = _int(state.get("global_step")) if isinstance(state, dict) else None
        if record.get("global_step") is not None and own != record["global_step"]:
            raise CheckpointCorrupt(path, f"it holds global_step {own}, its manifest entry says "
                                          f"{record['global_step']} (a file copied over another)")
        return state

    @staticmethod
    def _load_file(path: Path, entry: dict[str, Any] | None, map_location: Any) -> tuple[Any, dict[str, Any]]:
        handle = open_checkpoint(path)
        with handle or contextlib.nullcontext():
            if handle is None and entry is None:
                raise FileNotFoundError(f"Checkpoint file not found: {path}")
            record = verify_handle(path, entry, handle)
            assert handle is not None
            handle.seek(0)
            state = _weights_only_load(handle, f"{path} holds objects that torch.load(weights_only=True) refuses; "
                                               "it was not loaded and nothing in it was executed", map_location)
        return state, record

    def remove_checkpoint(self, path: Any) -> None:
        """Delete ``path`` and its manifest entry; files not listed in the manifest are left alone."""
        path = _local_path(path)
        directory = path.parent
        if not (directory / MANIFEST_NAME).is_file():
            log.warning("not removing %s: %s has no %s (not written by this run)", path, directory, MANIFEST_NAME)
            return
        with self._locked(directory):
            manifest = read_manifest(directory)
            entry = manifest["checkpoints"].get(path.name)
            if entry is None:
                log.warning("not removing %s: it is not listed in %s (not written by this run)",
                            path, directory / MANIFEST_NAME)
                return
            entry["deleting"] = True
            self._write(directory, manifest)
            remove_path(path)
            fsync_dir(directory)
            del manifest["checkpoints"][path.name]
            self._write(directory, manifest)
        log.debug("removed checkpoint %s", path)


def load_verified(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Every reader of a checkpoint outside Lightning (export, best-weights reload) goes through here:
    :meth:`AtomicCheckpointIO.load_checkpoint` (manifest size + sha256 + step, then weights-only)."""
    return AtomicCheckpointIO().load_checkpoint(path, map_location=map_location)


def load_unlisted(path: Path) -> dict[str, Any]:
    """Weights-only load of a file no manifest lists (tensors memory-mapped): for rebuilding one."""
    state = _weights_only_load(str(path), f"{path} holds objects torch.load(weights_only=True) refuses", "cpu",
                               mmap=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a Lightning checkpoint")
    return state


def _weights_only_load(source: Any, refusal: str, map_location: Any, **kwargs: Any) -> Any:
    """``torch.load(weights_only=True)``; the unpickler's refusal becomes :class:`UnsafeCheckpoint`."""
    try:
        return torch.load(source, map_location=map_location, weights_only=True, **kwargs)
    except Exception as err:
        if type(err).__name__ != "UnpicklingError":
            raise
        raise UnsafeCheckpoint(f"{refusal} ({_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    useful = [line for line in lines if "GLOBAL" in line or "Unsupported" in line] or lines
    return useful[0].split(". Please use")[0][:300]


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, torch.Tensor)) else None


def _local_path(path: Any) -> Path:
    text = os.fspath(path)
    if "://" in text and not text.startswith("file://"):
        raise ValueError(f"{text}: AtomicCheckpointIO writes local files only (fsync + rename)")
    return Path(text.removeprefix("file://")).absolute()
