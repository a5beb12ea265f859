"""The feature cache's on-disk entries, and a batch's entries as one block.

One entry is one sample's output of one frozen encoder slot (see :mod:`mmtrain.models.feature_cache`
for where entries live and when they are used): a ``safetensors`` file holding ``tokens`` [n, D]
and ``mask`` [n] (the encoder's output up to its last real token) and ``pooled`` [D], in the
encoder's output dtype, with metadata ``id`` (checked on read), ``length`` (the token count the
encoder produced for the whole batch), ``input_length`` (the padded input length it was given) and
``checksum`` (blake2b of the tensor bytes, checked on read: a damaged entry is recomputed).

* :func:`read_entry` / :func:`write_entry`: one file; reads parse the safetensors header and tensors
  from the bytes (no pickle, nothing executed); writes are atomic (temporary file + ``os.replace``).
* :func:`pack` / :func:`unpack`: entries -> one padded block per slot (what a collate ships from a
  DataLoader worker: a handful of tensors instead of three per sample) and back.

Plain tensors only: turning an encoder's output into entries and a block back into one is
:mod:`mmtrain.models.feature_rows` (data code imports no model code).
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save

from mmtrain.core.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

#: Tensors of an entry.
TENSORS = ("tokens", "mask", "pooled")

Entry = dict[str, Any]  # tokens, mask, pooled (tensors), length, input_length (int | None)


def entry_name(sample_id: str) -> str:
    """File name of a sample's entry: blake2b of its id (ids may hold ``/`` and other characters)."""
    return hashlib.blake2b(sample_id.encode(), digest_size=16).hexdigest() + ".safetensors"


def read_entry(path: Path, sample_id: str) -> Entry | None:
    """The entry at ``path`` if it is a whole entry of ``sample_id``; ``None`` when missing, torn or
    foreign (the caller recomputes it)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        log.warning("feature cache: unreadable entry %s (%s); recomputing", path, err)
        return None
    try:
        size = struct.unpack("<Q", data[:8])[0]
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
        if meta.get("id") != sample_id:
            return None
        tensors = load(data)
        entry: Entry = {name: tensors[name] for name in TENSORS}
        if meta.get("checksum") != entry_checksum(entry):  # a flipped bit in the tensors: recompute, never use
            raise ValueError("checksum mismatch")
        entry["length"] = int(meta["length"])
        entry["input_length"] = int(meta["input_length"]) if meta.get("input_length") else None
    except Exception as err:  # noqa: BLE001 - any damage means: not an entry, recompute it
        log.warning("feature cache: damaged entry %s (%s); recomputing", path, err)
        return None
    return entry


def write_entry(path: Path, sample_id: str, slot: str, key: str, version: int, entry: Mapping[str, Any]) -> None:
    """Atomic: a temporary file in the same folder, then ``os.replace``."""
    tensors = {k: entry[k].contiguous() for k in TENSORS}
    meta = {"id": sample_id, "slot": slot, "key": key, "version": str(version),
            "length": str(entry["length"]), "input_length": str(entry["input_length"] or ""),
            "checksum": entry_checksum(tensors)}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def entry_checksum(tensors: Mapping[str, Any]) -> str:
    """blake2b over the raw bytes of an entry's tensors (in :data:`TENSORS` order)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in TENSORS:
        digest.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy())  # no copy
    return digest.hexdigest()


def pack(entries: Sequence[Entry | None]) -> dict[str, Any] | None:
    """Entries of a batch's rows (``None`` where a row has none) as one zero-padded block:
    ``tokens`` [B, n, D], ``mask`` [B, n], ``pooled`` [B, D], and per row ``has``, ``count`` (real
    length), ``length`` and ``input_length``. ``None`` when no row has an entry."""
    given = [e for e in entries if e is not None]
    if not given:
        return None
    first = given[0]
    longest = max(int(e["tokens"].shape[0]) for e in given)
    dim = int(first["tokens"].shape[-1])
    tokens = torch.zeros(len(entries), longest, dim, dtype=first["tokens"].dtype)
    mask = torch.zeros(len(entries), longest, dtype=torch.bool)
    pooled = torch.zeros(len(entries), int(first["pooled"].shape[-1]), dtype=first["pooled"].dtype)
    counts = []
    for b, e in enumerate(entries):
        n = int(e["tokens"].shape[0]) if e is not None else 0
        if e is not None:
            tokens[b, :n] = e["tokens"]
            mask[b, :n] = e["mask"]
            pooled[b] = e["pooled"]
        counts.append(n)
    return {"tokens": tokens, "mask": mask, "pooled": pooled, "has": [e is not None for e in entries],
            "count": counts, "length": [e["length"] if e is not None else None for e in entries],
            "input_length": [e["input_length"] if e is not None else None for e in entries]}


def unpack(packed: Mapping[str, Any]) -> list[Entry | None]:
    """Inverse of :func:`pack` (views into the block)."""
    return [{"tokens": packed["tokens"][b, :n], "mask": packed["mask"][b, :n], "pooled": packed["pooled"][b],
             "length": packed["length"][b], "input_length": packed["input_length"][b]} if has else None
            for b, (has, n) in enumerate(zip(packed["has"], packed["count"]))]
