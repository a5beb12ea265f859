"""The packed-shard layout that ``mmtrain data pack`` writes and ``shards.source=`` reads.

A packed split is a folder (or the same files under a URL: ``https://``, ``s3://``, ``gs://``...)::

    shards.json          the root: format, sample count, label names, and per shard its name, sample count,
                         byte size and the sha256 of its index
    00000.tar            WebDataset layout: per sample ``<key>.json`` (its fields) and its media members
    00000.idx.json       the shard's index: per sample ``[key, id, offset, length, sha256]``

The tar files are plain WebDataset shards (``tar tf`` lists them; ``webdataset.WebDataset`` reads them). A
sample's members are contiguous, so ``[offset, offset + length)`` of its shard is one range read, checked
against its sha256 before anything in it is parsed. Media of one source file used by several samples of a
shard (segments of one video) are stored once, with the first of them; the others' JSON names that member.

Each sample's ``<key>.json``::

    {"id": "...", "fields": {"text": ..., "label": "joy", "start": ..., ...},
     "media": {"video": {"member": "000012.mp4", "start": 0.0, "end": 1.0}, "image": [{"member": ...}, ...]}}
"""

from __future__ import annotations

import re
from typing import Any

FORMAT = "mmtrain-shards"
VERSION = 1
ROOT = "shards.json"
#: A shard's file name: only these characters (no folders, no ``..``), so names from a root never leave it.
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,200}$")
#: A tar member of a sample: ``<key>.<ext>`` with a plain key.
_MEMBER = re.compile(r"^[0-9]{1,12}(\.[A-Za-z0-9]{1,16}){1,3}$")


class ShardError(ValueError):
    """Packed shards that cannot be read as written: a missing or truncated shard, a checksum that fails, an
    index that does not parse. The message names the source and the shard (and the sample, when one)."""


def shard_names(index: int) -> tuple[str, str]:
    """``(tar name, index name)`` of shard ``index``."""
    return f"{index:05d}.tar", f"{index:05d}.idx.json"


def check_name(name: Any, where: str) -> str:
    """``name`` if it is a plain file name (a shard or index in the root's folder), else a :class:`ShardError`."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ShardError(f"{where}: {name!r} is not a plain file name")
    return name


def check_member(name: Any, where: str) -> str:
    """``name`` if it is a sample member name ``<key>.<ext>``, else a :class:`ShardError`."""
    if not isinstance(name, str) or not _MEMBER.match(name):
        raise ShardError(f"{where}: member {name!r} is not <key>.<ext>")
    return name


def check_root(root: Any, where: str) -> dict[str, Any]:
    """The parsed ``shards.json``, its shapes checked (so a hostile or damaged root fails here, by name)."""
    if not isinstance(root, dict) or root.get("format") != FORMAT:
        raise ShardError(f"{where}: not an mmtrain shards root (format {FORMAT!r}); write one with `mmtrain data pack`")
    if root.get("version") != VERSION:
        raise ShardError(f"{where}: version {root.get('version')!r}; this mmtrain reads version {VERSION}")
    shards = root.get("shards")
    if not isinstance(shards, list) or not shards:
        raise ShardError(f"{where}: lists no shards")
    for number, shard in enumerate(shards):
        spot = f"{where} shards[{number}]"
        if not isinstance(shard, dict):
            raise ShardError(f"{spot}: not an object")
        check_name(shard.get("name"), spot)
        check_name(shard.get("index"), spot)
        for key in ("samples", "bytes"):
            if not isinstance(shard.get(key), int) or shard[key] < 0:
                raise ShardError(f"{spot}: {key} {shard.get(key)!r} is not a count")
        if not isinstance(shard.get("index_sha256"), str) or len(shard["index_sha256"]) != 64:
            raise ShardError(f"{spot}: index_sha256 missing")
    names = root.get("label_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ShardError(f"{where}: label_names must be a list of class names")
    return root


def check_index(entries: Any, *, shard: dict[str, Any], where: str) -> list[tuple[str, str, int, int, str]]:
    """A shard's parsed index as ``(key, id, offset, length, sha256)`` rows, each range inside the shard."""
    if not isinstance(entries, list) or len(entries) != shard["samples"]:
        raise ShardError(f"{where}: expected {shard['samples']} samples, got "
                         f"{len(entries) if isinstance(entries, list) else type(entries).__name__}")
    rows = []
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 5 and isinstance(entry[0], str) and isinstance(entry[1], str)
                and isinstance(entry[2], int) and isinstance(entry[3], int) and isinstance(entry[4], str)):
            raise ShardError(f"{where}: entry {entry!r} is not [key, id, offset, length, sha256]")
        key, sample_id, offset, length, digest = entry
        if offset < 0 or length <= 0 or offset + length > shard["bytes"]:
            raise ShardError(f"{where}: sample {sample_id} at [{offset}, {offset + length}) lies outside the shard "
                             f"({shard['bytes']} bytes)")
        rows.append((key, sample_id, offset, length, digest))
    return rows
