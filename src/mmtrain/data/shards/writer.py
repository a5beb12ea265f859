"""Writes one packed split: WebDataset tar shards, their indexes and ``shards.json`` (layout:
:mod:`mmtrain.data.shards.layout`).

The split is written into a staging folder beside its target and renamed into place when complete, so a reader
never sees half a split and an interrupted pack leaves the target as it was; run again, it goes on from its last
finished shard. Tar members are written with fixed
metadata (mtime 0, owner 0, mode 0444): the same samples give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtrain.core.fileio import atomic_write_bytes, replace_path
from mmtrain.data.shards.layout import FORMAT, ROOT, VERSION, shard_names

#: The staging folder's record of the finished shards (what an interrupted pack continues from).
PROGRESS = "progress.json"


@dataclass(frozen=True)
class MediaPart:
    """One media item of a sample to pack: its encoded bytes (the file holding them until a loader worker reads it;
    the writer takes bytes only), a file extension for the member name, and the segment ``[start, end)`` in seconds
    (``None``: all of it)."""

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
    to ``target`` (replacing it). The split is written in ``.<target>.packing`` beside it, with ``progress.json``
    updated at every finished shard: after an error or a kill, a writer with the same settings continues from the
    last finished shard (:attr:`position`: the source index to go on from; :attr:`ledger_lines`: the skip-ledger
    lines of this split written by then), so nothing packed is packed again.
    """

    def __init__(self, target: Path, *, shard_bytes: int, label_names: list[str], modalities: list[str],
                 source: dict[str, Any], share_media: bool = False, source_samples: int = 0) -> None:
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.staging = self.target.parent / f".{self.target.name}.packing"
        self.shard_bytes = int(shard_bytes)
        self.share_media = bool(share_media)
        self.meta = {"label_names": label_names, "modalities": modalities, "source": source}
        self.settings = {**self.meta, "shard_bytes": self.shard_bytes, "share_media": self.share_media,
                         "source_samples": int(source_samples)}
        self.shards: list[dict[str, Any]] = []
        self._tar: tarfile.TarFile | None = None
        self._rows: list[list[Any]] = []
        self._stored: dict[str, str] = {}  # source file (or bytes digest) -> member already in this shard
        self.samples = self.position = self.ledger_lines = 0
        self.kept = self.packed_before()  # a split finished before with these settings: nothing to write
        if self.kept is None:
            self._continue()

    def _continue(self) -> None:
        """Take up an interrupted pack of the same settings, or start a clean staging folder."""
        try:
            progress = json.loads((self.staging / PROGRESS).read_text())
        except (OSError, ValueError):
            progress = None
        if not isinstance(progress, dict) or progress.get("settings") != self.settings:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging.mkdir(parents=True)
            return
        self.shards, self.samples = progress["shards"], int(progress["samples"])
        self.position, self.ledger_lines = int(progress["position"]), int(progress["ledger_lines"])
        kept = {PROGRESS, *(s["name"] for s in self.shards), *(s["index"] for s in self.shards)}
        for path in self.staging.iterdir():
            if path.name not in kept:  # the shard being written when it stopped
                path.unlink()

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        if self._tar is not None and kind is not None:  # the finished shards stay for the next run
            self._tar.close()

    def _pack_settings(self) -> dict[str, Any]:
        """The settings a finished split records beside its metadata (``shard_bytes``, ``share_media``...)."""
        return {k: v for k, v in self.settings.items() if k not in self.meta}

    def packed_before(self) -> dict[str, Any] | None:
        """The root of ``target`` when a pack with these settings finished it already, else ``None``."""
        try:
            root = json.loads((self.target / ROOT).read_text())
        except (OSError, ValueError):
            return None
        same = root.get("pack") == self._pack_settings()
        return root if same and all(root.get(k) == v for k, v in self.meta.items()) else None

    def add(self, item: PackItem, index: int, ledger_lines: int) -> None:
        """Append sample ``index`` of the source (its media files are read here); ``ledger_lines``: this split's
        skip-ledger lines written so far."""
        if self._tar is not None and self._tar.offset >= self.shard_bytes:
            self._finish_shard(position=index, ledger_lines=ledger_lines)
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
        if not isinstance(part.data, (bytes, bytearray)):
            raise TypeError(f"sample {key} {modality}: the writer takes media bytes (read them in the loader's workers)")
        source = hashlib.sha256(part.data).hexdigest()  # the same bytes are stored once per sample (or shard)
        member = self._stored.get(source)
        if member is None:
            suffix = f"{modality}{number if number is not None else ''}"
            member = f"{key}.{suffix}.{part.ext.lstrip('.').lower() or 'bin'}"
            pending.append((member, bytes(part.data)))
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

    def _finish_shard(self, *, position: int, ledger_lines: int) -> None:
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
        self.position, self.ledger_lines = position, ledger_lines
        progress = {"settings": self.settings, "shards": self.shards, "samples": self.samples,
                    "position": position, "ledger_lines": ledger_lines}
        atomic_write_bytes(self.staging / PROGRESS, json.dumps(progress).encode(), durable=True)

    def close(self, ledger_lines: int = 0) -> Path:
        """Finish the last shard, write ``shards.json`` and move the split into place."""
        if self._tar is not None:
            self._finish_shard(position=self.settings["source_samples"], ledger_lines=ledger_lines)
        if not self.samples:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise ValueError(f"nothing to pack into {self.target}: every sample was skipped (see the ledger)")
        root = {"format": FORMAT, "version": VERSION, "samples": self.samples, **self.meta, "shards": self.shards,
                "pack": self._pack_settings()}
        (self.staging / ROOT).write_text(json.dumps(root, indent=1) + "\n")
        (self.staging / PROGRESS).unlink()
        replace_path(self.staging, self.target)
        return self.target
