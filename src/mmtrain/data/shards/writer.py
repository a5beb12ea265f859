"""Writes one packed split: WebDataset tar shards, their indexes and ``shards.json`` (layout:
:mod:`mmtrain.data.shards.layout`).

The split is written into a temporary folder beside its target and renamed into place when complete, so a reader
never sees half a split and an interrupted pack leaves the target as it was. Tar members are written with fixed
metadata (mtime 0, owner 0, mode 0444): the same samples give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtrain.core.fileio import replace_path
from mmtrain.data.shards.layout import FORMAT, ROOT, VERSION, shard_names


@dataclass(frozen=True)
class MediaPart:
    """One media item of a sample to pack: its encoded bytes (or the file holding them), a file extension for
    the member name, and the segment ``[start, end)`` in seconds (``None``: all of it)."""

    data: bytes | Path
    ext: str
    start: float | None = None
    end: float | None = None


@dataclass
class PackItem:
    """One sample to pack: its id, its plain fields (JSON), and its media by modality (one part, or a list)."""

    id: str
    fields: dict[str, Any]
    media: dict[str, MediaPart | list[MediaPart]] = field(default_factory=dict)


class SplitWriter:
    """Packs :class:`PackItem` s into shards of about ``shard_bytes`` each (a shard holds at least one sample).

    Each sample holds its own media (plain WebDataset: every reader takes the shards, Hugging Face's ``webdataset``
    loader included, which wants every sample to have the same members); a file used by two modalities of one
    sample (the video and audio of an mp4) is stored once. ``share_media``: a file used by several samples of a
    shard (the segments of one long video) is stored once, with the first of them, and the others name that
    member: smaller shards, a second ranged read for those samples, and readers other than mmtrain see samples
    without their media.

    Use as a context manager; :meth:`close` (or leaving the block without an error) renames the finished split
    to ``target`` (replacing it), an error removes the partial one.
    """

    def __init__(self, target: Path, *, shard_bytes: int, label_names: list[str], modalities: list[str],
                 source: dict[str, Any], share_media: bool = False) -> None:
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}-packing-", dir=self.target.parent))
        self.shard_bytes = int(shard_bytes)
        self.share_media = bool(share_media)
        self.meta = {"label_names": label_names, "modalities": modalities, "source": source}
        self.shards: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._rows: list[list[Any]] = []
        self._stored: dict[str, str] = {}  # source file (or bytes digest) -> member already in this shard
        self.samples = 0

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def add(self, item: PackItem) -> None:
        """Append one sample (its media files are read here)."""
        if self._tar is not None and self._tar.offset >= self.shard_bytes:
            self._finish_shard()
        if self._tar is None:
            self._tar = tarfile.open(self.staging / shard_names(len(self.shards))[0], "w", format=tarfile.GNU_FORMAT)
            self._rows, self._stored = [], {}
        key = f"{self.samples:09d}"
        if not self.share_media:
            self._stored = {}
        start = self._tar.offset
        media: dict[str, Any] = {}
        pending: list[tuple[str, bytes]] = []
        for modality, parts in item.media.items():
            entries = [self._entry(key, modality, part, number if isinstance(parts, list) else None, pending)
                       for number, part in enumerate(parts if isinstance(parts, list) else [parts])]
            media[modality] = entries if isinstance(parts, list) else entries[0]
        record = {"id": item.id, "fields": item.fields, "media": media}
        self._member(f"{key}.json", json.dumps(record, sort_keys=True).encode())
        for name, data in pending:
            self._member(name, data)
        self._rows.append([key, item.id, start, self._tar.offset - start])
        self.samples += 1

    def _entry(self, key: str, modality: str, part: MediaPart, number: int | None,
               pending: list[tuple[str, bytes]]) -> dict[str, Any]:
        source = f"file:{Path(part.data).resolve()}" if isinstance(part.data, Path) else None
        data = None
        if source is None:
            data = bytes(part.data)  # type: ignore[arg-type]
            source = f"sha256:{hashlib.sha256(data).hexdigest()}"
        member = self._stored.get(source)
        if member is None:
            suffix = f"{modality}{number if number is not None else ''}"
            member = f"{key}.{suffix}.{part.ext.lstrip('.').lower() or 'bin'}"
            pending.append((member, data if data is not None else Path(part.data).read_bytes()))
            self._stored[source] = member
        entry: dict[str, Any] = {"member": member}
        if part.start is not None:
            entry["start"] = float(part.start)
        if part.end is not None:
            entry["end"] = float(part.end)
        return entry

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        assert self._tar is not None
        self._tar.addfile(info, io.BytesIO(data))

    def _finish_shard(self) -> None:
        assert self._tar is not None
        self._tar.close()
        name, index_name = shard_names(len(self.shards))
        path = self.staging / name
        with open(path, "rb") as handle:  # each sample's range hashed as readers will read it
            for row in self._rows:
                handle.seek(row[2])
                row.append(hashlib.sha256(handle.read(row[3])).hexdigest())
        index = json.dumps(self._rows, separators=(",", ":")).encode()
        (self.staging / index_name).write_bytes(index)
        self.shards.append({"name": name, "index": index_name, "samples": len(self._rows),
                            "bytes": path.stat().st_size, "index_sha256": hashlib.sha256(index).hexdigest()})
        self._tar = None

    def close(self) -> Path:
        """Finish the last shard, write ``shards.json`` and move the split into place."""
        if self._tar is not None:
            self._finish_shard()
        if not self.samples:
            self.abort()
            raise ValueError(f"nothing to pack into {self.target}: every sample was skipped (see the ledger)")
        root = {"format": FORMAT, "version": VERSION, "samples": self.samples, **self.meta, "shards": self.shards}
        (self.staging / ROOT).write_text(json.dumps(root, indent=1) + "\n")
        replace_path(self.staging, self.target)
        return self.target

    def abort(self) -> None:
        if self._tar is not None:
            self._tar.close()
        shutil.rmtree(self.staging, ignore_errors=True)
