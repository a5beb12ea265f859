"""Packed shards (``shards.source=<folder or URL>``): the samples ``mmtrain data pack`` wrote, read locally or remotely.

Map-style: sample ``i`` is one ranged read of its shard (found through the shard's small index, read once per
process and shard), checked against its sha256, then its media bytes are decoded by mmtrain's decoders. Nothing is
read whole and nothing is read in order, so the run's sampler decides the order (shuffled per epoch, sharded over
ranks) and a resumed run starts at its position without reading what came before: resume costs the same at any
point of an epoch. Layout and checks: :mod:`mmtrain.data.shards.layout`.

A sample whose media cannot be decoded goes to the skip ledger with its id; a shard that is missing, truncated or
fails its checksum stops the run with a :class:`~mmtrain.data.shards.layout.ShardError` naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mmtrain.data.media import MediaFile, read_audio_segment, read_video_segment
from mmtrain.data.images import read_image
from mmtrain.data.shards.layout import ROOT, ShardError, check_index, check_member, check_root
from mmtrain.data.shards.store import Store
from mmtrain.data.skips import SkippedSample, load_media

MEDIA = ("image", "audio", "video")
STREAMS = ("audio", "video")


class ShardsDataset(Dataset):
    """One packed split as mmtrain samples (see the module).

    Args:
        source: the folder or URL ``mmtrain data pack --out`` wrote (``data/shards``, ``https://host/shards``,
            ``s3://bucket/shards``); the split's ``shards.json`` lies in ``<source>/<split>``.
        split: the split to read.
        modalities: the media (and ``text``) this run reads; each must have been packed.
        num_frames: video frames per sample.
        label_names: class names in index order; must equal the packed ones when both are given.
        storage_options: fsspec options for a URL (``endpoint_url``, ``anon``...).
        sha256: the expected sha256 of ``shards.json`` (pins a remote copy to the one you packed).
        index_cache: shard indexes kept in memory per process.

    Returns (per item): ``{"id", <fields>, "label": int, <modality>: decoded media}`` as the packed format gave,
    or a :class:`~mmtrain.data.skips.SkippedSample`.
    """

    def __init__(self, *, source: str, modalities: Sequence[str], num_frames: int = 8,
                 label_names: Sequence[str] | None = None, storage_options: Mapping[str, Any] | None = None,
                 split: str = "train", sha256: str | None = None, index_cache: int = 64) -> None:
        self.split = split
        self.store = Store(f"{str(source).rstrip('/')}/{split}", storage_options=storage_options)
        self.name = self.store.location
        raw = self.store.read(ROOT)
        digest = hashlib.sha256(raw).hexdigest()
        if sha256 is not None and digest != sha256:
            raise ShardError(f"shards {self.name}: {ROOT} has sha256 {digest}, not the pinned {sha256}")
        try:
            root = json.loads(raw)
        except ValueError as err:
            raise ShardError(f"shards {self.name}: {ROOT} is not JSON ({err})") from err
        root = check_root(root, f"shards {self.name} {ROOT}")
        self.files = digest  # what the resume fingerprint compares: the same shards wherever they are read from
        self.shards: list[dict[str, Any]] = root["shards"]
        self.starts = np.cumsum([0] + [s["samples"] for s in self.shards])
        packed = list(root.get("label_names") or [])
        if label_names is not None and packed and list(label_names) != packed:
            raise ValueError(f"shards {self.name}: label_names {list(label_names)} differ from the packed {packed}")
        self.label_names = list(label_names) if label_names is not None else packed
        held = set(root.get("modalities") or [])
        missing = [m for m in modalities if m not in held]
        if missing:
            raise ValueError(f"shards {self.name}: modalities {missing} were not packed (it holds {sorted(held)}); "
                             "pack them (`mmtrain data pack` with those modalities) or leave them out")
        self.modalities = list(modalities)
        self.num_frames = int(num_frames)
        self.index_cache = max(1, int(index_cache))
        self._indexes: OrderedDict[int, tuple[list[tuple[str, str, int, int, str]], dict[str, int]]] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_indexes": OrderedDict()}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        return self.load(index)

    @property
    def media_modalities(self) -> list[str]:
        """The media this dataset decodes (the feature cache leaves those it holds features of undecoded)."""
        return [m for m in self.modalities if m in MEDIA]

    def sample_id(self, index: int) -> str:
        """Sample ``index``'s id, from its shard's index (no sample read)."""
        shard, row = self.locate(int(index))
        return self.index(shard)[row][1]

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, row)`` of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return shard, int(index - self.starts[shard])

    def index(self, shard: int) -> list[tuple[str, str, int, int, str]]:
        """Shard ``shard``'s index rows ``(key, id, offset, length, sha256)``, checked against the root."""
        return self._index(shard)[0]

    def _index(self, shard: int) -> tuple[list[tuple[str, str, int, int, str]], dict[str, int]]:
        """Shard ``shard``'s rows and each key's row (kept for the last ``index_cache`` shards used)."""
        cached = self._indexes.get(shard)
        if cached is not None:
            self._indexes.move_to_end(shard)
            return cached
        entry = self.shards[shard]
        where = f"shards {self.name} {entry['index']}"
        raw = self.store.read(entry["index"])
        if hashlib.sha256(raw).hexdigest() != entry["index_sha256"]:
            raise ShardError(f"{where}: sha256 differs from {ROOT}'s (a changed or damaged index)")
        try:
            rows = check_index(json.loads(raw), shard=entry, where=where)
        except ValueError as err:
            raise ShardError(f"{where}: {err}") from err
        cached = self._indexes[shard] = rows, {row[0]: number for number, row in enumerate(rows)}
        if len(self._indexes) > self.index_cache:
            self._indexes.popitem(last=False)
        return cached

    def members(self, shard: int, row: int) -> dict[str, bytes]:
        """The tar members of one sample (name -> bytes), after its range passed its sha256."""
        key, sample_id, offset, length, digest = self.index(shard)[row]
        name = self.shards[shard]["name"]
        blob = self.store.read(name, offset, length)
        if hashlib.sha256(blob).hexdigest() != digest:
            raise ShardError(f"shards {self.name} {name}: sample {sample_id} fails its sha256 (damaged shard)")
        out: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tar:
            for member in tar:
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is None or not member.name.startswith(f"{key}."):
                    raise ShardError(f"shards {self.name} {name}: sample {sample_id} holds {member.name!r}")
                out[member.name] = handle.read()
        return out

    def load(self, index: int, modalities: Sequence[str] | None = None) -> dict[str, Any] | SkippedSample:
        """Sample ``index`` with its media decoded (only those of ``modalities`` when given)."""
        shard, row = self.locate(int(index))
        key = self.index(shard)[row][0]
        members = self.members(shard, row)
        where = f"shards {self.name} {self.shards[shard]['name']} sample {key}"
        try:
            record = json.loads(members[f"{key}.json"])
        except (KeyError, ValueError) as err:
            raise ShardError(f"{where}: no readable {key}.json ({err})") from err
        fields = record.get("fields", {}) if isinstance(record, dict) else None
        if not isinstance(fields, dict):
            raise ShardError(f"{where}: {key}.json is not {{id, fields, media}}")
        # media come only from the sample's members, and its id only from "id"
        sample: dict[str, Any] = {**{k: v for k, v in fields.items() if k not in (*MEDIA, "id")},
                                  "id": str(record.get("id", key))}
        if "label" in sample and self.label_names:
            sample["label"] = self._label(sample["label"], where)
        wanted = [m for m in self.modalities if m in MEDIA and (modalities is None or m in modalities)]
        media = record.get("media") or {}
        if not isinstance(media, dict):
            raise ShardError(f"{where}: its media entry is not an object")
        # The video and the audio of one packed mp4 share one opened container, as they do read from the file.
        streams = Counter(media[m].get("member") for m in wanted if m in STREAMS and isinstance(media.get(m), dict))
        files = {member: MediaFile(self._member(member, shard, members, where))
                 for member, count in streams.items() if count > 1 and isinstance(member, str)}
        try:
            return load_media(sample, {m: self._loader(m, media.get(m), shard, members, where, files) for m in wanted})
        finally:
            for file in files.values():
                file.close()

    def _label(self, value: Any, where: str) -> int:
        if isinstance(value, str) and value in self.label_names:
            return self.label_names.index(value)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.label_names):
            return value
        raise ShardError(f"{where}: label {value!r} is not one of {self.label_names}")

    def _loader(self, modality: str, spec: Any, shard: int, members: dict[str, bytes], where: str,
                files: dict[str, MediaFile]) -> Any:
        if spec is None:
            raise ShardError(f"{where}: no {modality} was packed for it")
        specs = spec if isinstance(spec, list) else [spec]
        for item in specs:
            if not isinstance(item, dict):
                raise ShardError(f"{where}: media {modality} entry {item!r} is not an object")
            check_member(item.get("member"), where)

        def decode(item: dict[str, Any]) -> Any:
            start, end = item.get("start"), item.get("end")
            if item["member"] in files:
                data: bytes | MediaFile = files[item["member"]]
            else:
                data = self._member(item["member"], shard, members, where)
            if modality == "image":
                return read_image(data)  # type: ignore[arg-type]
            if modality == "audio":
                return read_audio_segment(data, start=start, end=end)
            return read_video_segment(data, num_frames=self.num_frames, start=start, end=end)

        return lambda: [decode(i) for i in specs] if isinstance(spec, list) else decode(specs[0])

    def _member(self, member: str, shard: int, members: dict[str, bytes], where: str) -> bytes:
        """A member of this sample, or of the earlier sample of the shard that stored the same source file."""
        if member in members:
            return members[member]
        row = self._index(shard)[1].get(member.split(".", 1)[0])
        stored = self.members(shard, row) if row is not None else {}
        if member in stored:
            return stored[member]
        raise ShardError(f"{where}: member {member} is not in its shard")

    @property
    def ids(self) -> list[str]:
        """Sample ids in index order (reads every shard's index)."""
        return [row[1] for shard in range(len(self.shards)) for row in self.index(shard)]
