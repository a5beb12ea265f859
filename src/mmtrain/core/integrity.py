"""Checksums of export folders, and an optional HMAC signature for artifacts that are shared.

An export folder (``save_pretrained`` of a model, processor and training config) holds
``manifest.json``::

    {"format": "mmtrain-files", "version": 1,
     "files": {"model.safetensors": {"sha256": "...", "bytes": 123}, ...},
     "hmac_sha256": "..."}            # only when MMTRAIN_SIGNING_KEY was set at write time

Every mmtrain reader of an export verifies the files the manifest lists (size, then sha256) before
reading them. Files added later (``eval_test.json``) are not listed and not checked.

A sha256 stored beside the files detects *damage* (a flipped bit, a truncated copy), not *tampering*:
whoever can edit the files can rewrite the manifest. For artifacts that cross a trust boundary, set
``MMTRAIN_SIGNING_KEY`` (a shared secret) when writing and when reading: the manifest is then signed
with HMAC-SHA256, and a reader holding a key refuses an unsigned manifest or a wrong signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mmtrain.core.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT, VERSION = "mmtrain-files", 1
SIGNING_KEY_ENV = "MMTRAIN_SIGNING_KEY"
SIGNATURE_KEY = "hmac_sha256"

#: (path, size, mtime_ns, inode) of files that verified in this process: a second reader of the same
#: unchanged file (predict checks the folder, then ``from_pretrained`` its weights) does not hash again.
_VERIFIED: set[tuple[str, int, int, int]] = set()


class ArtifactDamaged(ValueError):
    """A file does not match the manifest beside it (or the manifest is missing or unreadable)."""


class SignatureMismatch(ValueError):
    """A manifest's HMAC signature is missing or wrong for the key in ``MMTRAIN_SIGNING_KEY``."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def signing_key() -> bytes | None:
    """The shared secret from ``MMTRAIN_SIGNING_KEY`` (``None`` when unset or empty)."""
    key = os.environ.get(SIGNING_KEY_ENV, "")
    return key.encode() if key else None


def signature(payload: Any, key: bytes) -> str:
    """HMAC-SHA256 (hex) of ``payload``'s canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def check_signature(payload: Any, stored: str | None, source: str) -> None:
    """With a key set, ``stored`` must be ``payload``'s signature; without one it is not checked.

    Raises:
        SignatureMismatch: naming ``source``: unsigned while a key is set, or a wrong signature.
    """
    key = signing_key()
    if key is None:
        if stored:
            log.info("%s is signed, but %s is not set here: its signature was not checked", source, SIGNING_KEY_ENV)
        return
    if not stored:
        raise SignatureMismatch(
            f"{source} is not signed, but {SIGNING_KEY_ENV} is set: only signed artifacts are loaded. "
            f"Unset {SIGNING_KEY_ENV} to load unsigned artifacts you trust, or re-export with the key set."
        )
    if not hmac.compare_digest(stored, signature(payload, key)):
        raise SignatureMismatch(
            f"{source}: the signature does not match (a file list edited after signing, or another key). "
            "It was not loaded."
        )


def _read(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactDamaged(
            f"{folder} has no {MANIFEST}, so its files cannot be checked for damage. Exports written by "
            "mmtrain carry one; re-export it (`mmtrain export <checkpoint>`), or, if you trust the files, "
            "load with verify=False."
        ) from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtifactDamaged(f"{path} is unreadable ({err}); the folder cannot be verified.") from None
    if not isinstance(manifest, dict) or [manifest.get("format"), manifest.get("version")] != [FORMAT, VERSION] \
            or not isinstance(manifest.get("files"), dict):
        raise ArtifactDamaged(f"{path} is not a version {VERSION} {FORMAT} manifest.")
    return manifest


def update_manifest(folder: str | Path, names: Iterable[str] | None = None) -> Path:
    """Add (or refresh) ``names`` in ``folder``'s manifest; when ``None``, every regular file of the folder and of
    its subfolders (``text_tokenizer/tokenizer.json``), except subfolders that carry a manifest of their own.

    A valid existing manifest keeps its other entries; a damaged one is replaced. Signed when
    ``MMTRAIN_SIGNING_KEY`` is set.
    """
    folder = Path(folder)
    try:
        files = dict(_read(folder)["files"])
    except ArtifactDamaged:
        files = {}
    if names is None:
        names = _covered_files(folder)
    for name in names:
        path = folder / name
        files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest: dict[str, Any] = {"format": FORMAT, "version": VERSION, "files": files}
    key = signing_key()
    if key is not None:
        manifest[SIGNATURE_KEY] = signature(files, key)
    atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode(), durable=True)
    return folder / MANIFEST


def _covered_files(folder: Path) -> list[str]:
    """Files under ``folder`` (posix paths relative to it) its manifest covers: all but manifests, and but the
    subfolders that carry their own (an export's ``adapter/``, a VLM's ``hf/``)."""
    out: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != MANIFEST:
            out.append(path.name)
        elif path.is_dir() and not (path / MANIFEST).exists():
            out += [f"{path.name}/{name}" for name in _covered_files(path)]
    return out


def verify_folder(folder: str | Path, names: Iterable[str] | None = None) -> None:
    """Check ``names`` (default: every listed file) of ``folder`` against its manifest and signature.

    Raises:
        ArtifactDamaged: no or unreadable manifest, a listed file missing, the wrong size or checksum,
            or one of ``names`` not listed.
        SignatureMismatch: see :func:`check_signature`.
    """
    folder = Path(folder)
    manifest = _read(folder)
    files: Mapping[str, Any] = manifest["files"]
    check_signature(files, manifest.get(SIGNATURE_KEY), str(folder / MANIFEST))
    for name in (files if names is None else names):
        entry = files.get(name)
        path = folder / name
        if entry is None:
            raise ArtifactDamaged(f"{path} is not listed in {folder / MANIFEST}; it cannot be verified.")
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise ArtifactDamaged(f"{path} is missing (listed in {MANIFEST}); the export is incomplete.") from None
        seen = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if seen in _VERIFIED and stat.st_size == entry["bytes"]:
            continue
        if stat.st_size != entry["bytes"]:
            raise ArtifactDamaged(f"{path} is damaged: {stat.st_size} bytes, {MANIFEST} says {entry['bytes']}.")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise ArtifactDamaged(
                f"{path} is damaged: sha256 {digest[:12]}..., {MANIFEST} says {entry['sha256'][:12]}... "
                "It was not loaded; copy the export again from its source."
            )
        _VERIFIED.add(seen)
