"""Precomputed feature shards: frozen-encoder entries, many per file, written by ``mmtrain features``.

The feature cache (:mod:`mmtrain.models.feature_cache`) stores one ``safetensors`` file per sample and
slot: fine for thousands of samples, 100M files at scale. ``mmtrain features`` encodes a dataset once,
offline, into shards instead, at the cache's own paths ``<root>/<slot>/<key>/<split>/`` (the same
keys, so a run reads them only when its weights, preprocessing, data config, device type, precision
and torch version are those the features were computed under):

* ``part<K>of<N>-<nnnnn>.safetensors``: entries ``<row>.tokens`` [n, D], ``<row>.mask`` [n],
  ``<row>.pooled`` [D] (exactly what a cache entry holds) and, in the header's metadata (key
  ``mmtrain-features``), per row ``[id, length, input_length, checksum]`` (:func:`~mmtrain.data.feature_entries.entry_checksum`);
* ``part<K>of<N>-<nnnnn>.json``, written after its shard (a shard without one is unfinished): the
  file's name, size and sha256, its ids, and the dataset positions ``[start, end)`` it covers (an
  interrupted ``mmtrain features`` goes on after the last shard every slot finished).

Reading (:class:`FeatureShards`) looks a sample up by its id in one sorted array of 64-bit id hashes
(16 bytes per sample, shared by forked DataLoader workers), opens the shard through
``safetensors.safe_open`` (memory-mapped; the header is parsed by safetensors, nothing is executed) and
checks the row's id and checksum: a damaged entry is logged and encoded again, as a damaged cache
entry is. A shard whose size differs from its sidecar's (truncated, replaced) is left out with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from mmtrain.core.fileio import atomic_write_bytes
from mmtrain.data.feature_entries import TENSORS, Entry, entry_checksum, entry_name, read_entry

log = logging.getLogger(__name__)

FORMAT = "mmtrain-features"
#: A shard's files: ``partKKKofNNN-nnnnn.json`` (its sidecar) and ``.safetensors``.
SHARD = re.compile(r"^part(\d{3})of(\d{3})-(\d{5})\.(json|safetensors)$")


def shard_stem(part: int, parts: int, number: int) -> str:
    """``part<K>of<N>-<nnnnn>``: a shard's file name without its suffix."""
    return f"part{part:03d}of{parts:03d}-{number:05d}"


def id_hash(sample_id: str) -> int:
    """64-bit blake2b of a sample id (the lookup key; the row's stored id settles collisions)."""
    return int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=8).digest(), "little")


class FeatureShardWriter:
    """Writes the entries of one split's slots into shards, all slots rolling to a new shard together.

    Args:
        folders: slot -> its entry folder (``<root>/<slot>/<key>/<split>``).
        part, parts: this writer's part of the dataset (``--part K/N``), in the file names.
        shard_bytes: a shard is written once its entries reach this size (at a batch boundary).
        facts: what must match when an interrupted run goes on (batch size, parts...), kept in each sidecar.
    """

    def __init__(self, folders: Mapping[str, Path], *, part: int, parts: int, shard_bytes: int,
                 facts: Mapping[str, Any]) -> None:
        self.folders = {slot: Path(folder) for slot, folder in folders.items()}
        self.part, self.parts, self.shard_bytes = int(part), int(parts), int(shard_bytes)
        self.facts = dict(facts)
        self.number = 0
        self.start: int | None = None
        self.pending: dict[str, list[tuple[str, Entry]]] = {slot: [] for slot in self.folders}
        self.pending_bytes = dict.fromkeys(self.folders, 0)
        self.written = {"shards": 0, "entries": 0, "bytes": 0}

    def resume(self) -> int | None:
        """The dataset position after the last shard every slot finished (``None``: nothing finished);
        removes this part's files beyond it. Raises ``ValueError`` when the finished shards were written
        under other settings (batch size, parts: their features would differ in the last bits)."""
        finished: list[dict[int, dict[str, Any]]] = []
        for folder in self.folders.values():
            folder.mkdir(parents=True, exist_ok=True)
            numbers: dict[int, dict[str, Any]] = {}
            for path in folder.glob(f"part{self.part:03d}of*-*.json"):
                match = SHARD.match(path.name)
                if match is None or match[4] != "json":
                    continue
                sidecar = json.loads(path.read_text())
                shard = folder / sidecar["file"]
                if int(match[2]) != self.parts or sidecar.get("facts") != self.facts:
                    raise ValueError(
                        f"{path}: written with {sidecar.get('facts')} (--part {self.part}/{int(match[2])}), this run has "
                        f"{self.facts} (--part {self.part}/{self.parts}); use the same settings or delete {folder}")
                if shard.is_file() and shard.stat().st_size == sidecar["bytes"]:
                    numbers[int(match[3])] = sidecar
            finished.append(numbers)
        done = 0
        while all(done in numbers for numbers in finished):
            done += 1
        for folder in self.folders.values():  # unfinished or partly finished shards: written again
            for path in folder.glob(f"part{self.part:03d}of{self.parts:03d}-*"):
                match = SHARD.match(path.name)
                if match is not None and int(match[3]) >= done:
                    path.unlink()
        self.number = done
        return int(finished[0][done - 1]["end"]) if done else None

    def add(self, rows: Mapping[str, Sequence[tuple[str, Entry]]], *, start: int, end: int) -> None:
        """One batch: per slot its ``(entry id, entry)`` rows; the batch covers dataset positions ``[start, end)``."""
        if self.start is None:
            self.start = start
        for slot, given in rows.items():
            self.pending[slot].extend(given)
            self.pending_bytes[slot] += sum(_nbytes(e) for _, e in given)
        if max(self.pending_bytes.values()) >= self.shard_bytes:
            self.flush(end)

    def flush(self, end: int) -> None:
        """Write the pending entries (if any) as shard ``number`` of every slot, covering ``[start, end)``."""
        if self.start is None:
            return
        stem = shard_stem(self.part, self.parts, self.number)
        for slot, rows in self.pending.items():
            tensors: dict[str, torch.Tensor] = {}
            meta_rows = []
            for row, (sample_id, entry) in enumerate(rows):
                for name in TENSORS:
                    tensors[f"{row}.{name}"] = entry[name].contiguous()
                meta_rows.append([sample_id, int(entry["length"]), entry["input_length"], entry_checksum(entry)])
            blob = save(tensors, metadata={FORMAT: json.dumps(meta_rows)})  # one key: the same bytes every time
            folder = self.folders[slot]
            atomic_write_bytes(folder / f"{stem}.safetensors", blob)
            sidecar = {"format": FORMAT, "file": f"{stem}.safetensors", "bytes": len(blob),
                       "sha256": hashlib.sha256(blob).hexdigest(), "start": self.start, "end": int(end),
                       "facts": self.facts, "ids": [sample_id for sample_id, _ in rows]}
            atomic_write_bytes(folder / f"{stem}.json", json.dumps(sidecar).encode())
            self.written["bytes"] += len(blob)
            self.written["entries"] += len(rows)
        self.written["shards"] += 1
        self.number += 1
        self.start = None
        self.pending = {slot: [] for slot in self.folders}
        self.pending_bytes = dict.fromkeys(self.folders, 0)


def _nbytes(entry: Entry) -> int:
    return sum(entry[name].numel() * entry[name].element_size() for name in TENSORS)


class FeatureShards:
    """The finished shards of one ``<root>/<slot>/<key>/<split>`` folder, looked up by sample id.

    Picklable (open shards are not carried into DataLoader workers; each opens its own).
    """

    def __init__(self, folder: str | Path, open_shards: int = 16) -> None:
        self.folder = Path(folder)
        self.open_shards = max(1, int(open_shards))
        self.files: list[str] = []
        hashes: list[int] = []
        where: list[int] = []
        for path in sorted(self.folder.glob("part*.json")):
            if SHARD.match(path.name) is None:
                continue
            try:
                sidecar = json.loads(path.read_text())
                shard = self.folder / str(sidecar["file"])
                if sidecar.get("format") != FORMAT or Path(sidecar["file"]).name != sidecar["file"]:
                    raise ValueError("not a feature shard sidecar")
                ids = [str(i) for i in sidecar["ids"]]
                size = shard.stat().st_size
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("feature shards: %s is unreadable (%s); its entries will be encoded", path, err)
                continue
            if size != sidecar["bytes"]:
                log.warning("feature shards: %s has %d bytes, its sidecar says %d (truncated or replaced); "
                            "its entries will be encoded", shard, size, sidecar["bytes"])
                continue
            number = len(self.files)
            self.files.append(shard.name)
            hashes.extend(id_hash(i) for i in ids)
            where.extend((number << 32) | row for row in range(len(ids)))
        keys = np.array(hashes, dtype=np.uint64)
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._where = np.array(where, dtype=np.int64)[order]
        self._open: OrderedDict[int, tuple[Any, list[list[Any]]]] = OrderedDict()

    def __len__(self) -> int:
        return int(self._keys.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": OrderedDict()}

    def get(self, sample_id: str) -> Entry | None:
        """The sample's entry, or ``None`` when no finished shard holds a whole one."""
        key = np.uint64(id_hash(sample_id))
        at = int(np.searchsorted(self._keys, key))
        while at < len(self) and self._keys[at] == key:
            shard, row = divmod(int(self._where[at]), 1 << 32)
            entry = self._read(shard, row, sample_id)
            if entry is not None:
                return entry
            at += 1
        return None

    def _handle(self, shard: int) -> tuple[Any, list[list[Any]]]:
        known = self._open.get(shard)
        if known is not None:
            self._open.move_to_end(shard)
            return known
        handle = safe_open(str(self.folder / self.files[shard]), framework="pt")
        rows = json.loads((handle.metadata() or {})[FORMAT])
        self._open[shard] = known = (handle, rows)
        if len(self._open) > self.open_shards:
            self._open.popitem(last=False)
        return known

    def _read(self, shard: int, row: int, sample_id: str) -> Entry | None:
        path = self.folder / self.files[shard]
        try:
            handle, rows = self._handle(shard)
            stored_id, length, input_length, checksum = rows[row]
            if stored_id != sample_id:
                return None  # another id with the same 64-bit hash
            entry: Entry = {name: handle.get_tensor(f"{row}.{name}") for name in TENSORS}
            if entry_checksum(entry) != checksum:
                raise ValueError("checksum mismatch")
        except Exception as err:  # noqa: BLE001 - any damage means: not an entry, encode it again
            log.warning("feature shards: damaged entry of %s in %s (%s); encoding it again", sample_id, path, err)
            return None
        entry["length"] = int(length)
        entry["input_length"] = int(input_length) if input_length else None
        return entry


def lookup_entry(sample_id: str, folder: Path, shards: FeatureShards | None) -> Entry | None:
    """A sample's entry from the precomputed shards, else from the cache's per-sample files, else ``None``."""
    entry = shards.get(sample_id) if shards is not None else None
    return entry if entry is not None else read_entry(folder / entry_name(sample_id), sample_id)
