"""Serve frozen-encoder features before decoding: a split dataset that skips media the cache holds.

With the feature cache on (:mod:`mmtrain.models.feature_cache`), :class:`CachedFeatureDataset` wraps a
split's raw dataset (beneath the resume wrappers of :mod:`mmtrain.data.resumable`). For each sample
it reads the entries of the split's cached slots (a :class:`CachePlan`, computed in the main process
from the model: folders and keys) and attaches them to the sample under ``CACHED_KEY``. A media
modality (video, audio, image) whose every encoder slot is cached and has the sample's entry is
*served*: it is not decoded, and the sample holds a :class:`CachedMedia` marker in its place, so the
processor's collate skips its preprocessing (frames, log-mel) while presence masks and prompts
still see the modality as there. Text is still tokenized (cheap; its padded length shapes the
text features). Samples without every entry (first epoch, a new sample, a torn file) decode as
before and their encoders run in the model.

Decoding is skipped for datasets that can decode some modalities only (``load(index, modalities)``,
and ``records`` or ``sample_id``/``media_modalities``: :class:`~mmtrain.data.formats.common.RecordDataset`,
:class:`~mmtrain.data.synthetic.SyntheticDataset`); any other
map-style dataset is read whole and the served media dropped before collation. Media given as a
list of items (pairs) are never served. The wrapper forwards every other attribute (``ids``,
``label_names``, ``set_epoch``, ``sample_views``...) to the dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmtrain.data.feature_entries import Entry, pack
from mmtrain.data.feature_shards import FeatureShards, lookup_entry

#: Sample and batch key of the cached features (sample: ``{"keys", "entries"}``; batch: :class:`CachedBatch`).
CACHED_KEY = "cached_features"
#: Modalities whose decoding can be skipped (text is always tokenized).
SERVABLE = ("video", "audio", "image")


@dataclass(frozen=True)
class CachedMedia:
    """Stands in a sample for media that was not decoded: its encoder outputs come from the cache."""

    modality: str


@dataclass(frozen=True)
class CachePlan:
    """What a split's dataset reads from the cache (picklable: it travels into DataLoader workers).

    Attributes:
        split: ``train``, ``val`` or ``test``.
        slots: cached slot -> ``(entry folder, key)``.
        served: media modality -> its slots, for modalities whose every slot is cached.
        skip_decoding: the dataset decodes modalities separately (else decoded, then dropped).
        used: the modalities the processor reads (``None``: all); others are not decoded either.
        shards: cached slot -> its precomputed shards (``mmtrain features``), read before the entry folder.
    """

    split: str
    slots: dict[str, tuple[str, str]]
    served: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skip_decoding: bool = False
    used: tuple[str, ...] | None = None
    shards: dict[str, FeatureShards] = field(default_factory=dict)


def can_skip_decoding(dataset: Any) -> bool:
    """Whether ``dataset`` decodes only the modalities asked for (``load(index, modalities)``) and tells
    each sample's id and media without decoding: ``records`` (a ``RecordDataset``), or ``sample_id(index)``
    and ``media_modalities`` (a ``SyntheticDataset``)."""
    described = isinstance(getattr(dataset, "records", None), Sequence) or (
        callable(getattr(dataset, "sample_id", None)) and getattr(dataset, "media_modalities", None) is not None)
    return callable(getattr(dataset, "load", None)) and described


def describe(dataset: Any, index: int) -> tuple[str, list[str]]:
    """``(sample id, its single-item media modalities)`` of sample ``index``, without decoding it
    (media given as a list of items, e.g. pairs, are left out: never served)."""
    records = getattr(dataset, "records", None)
    if isinstance(records, Sequence):
        record = records[index]
        return str(record.fields["id"]), [m for m, ref in record.media.items() if not isinstance(ref, tuple)]
    return str(dataset.sample_id(index)), list(dataset.media_modalities)


class CachedFeatureDataset(Dataset):
    """``dataset`` with the plan's entries attached to each sample and served media left undecoded."""

    def __init__(self, dataset: Dataset, plan: CachePlan) -> None:
        self.dataset = dataset
        self.plan = plan
        self._folders = {slot: Path(folder) for slot, (folder, _) in plan.slots.items()}
        self._keys = {slot: key for slot, (_, key) in plan.slots.items()}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        # ids, label_names, set_epoch, sample_views... of the dataset; not ``dataset`` itself (unset while
        # unpickling in a worker) nor dunders (``__getitems__`` would bypass ``__getitem__``)
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def entries(self, sample_id: str) -> dict[str, Entry]:
        """The sample's entries of the cached slots that have one."""
        found = {slot: lookup_entry(sample_id, folder, self.plan.shards.get(slot))
                 for slot, folder in self._folders.items()}
        return {slot: entry for slot, entry in found.items() if entry is not None}

    def _served(self, entries: Mapping[str, Entry]) -> list[str]:
        return [m for m, slots in self.plan.served.items() if all(s in entries for s in slots)]

    def __getitem__(self, index: int) -> Any:
        if not self.plan.skip_decoding:
            return self._after_decoding(self.dataset[index])
        sample_id, media = describe(self.dataset, index)
        entries = self.entries(sample_id)
        served = [m for m in self._served(entries) if m in media]
        wanted = [m for m in media if m not in served and (self.plan.used is None or m in self.plan.used)]
        sample = self.dataset.load(index, wanted)  # type: ignore[attr-defined]
        if not isinstance(sample, dict):  # a SkippedSample: media that failed to decode
            return sample
        for modality in served:
            sample[modality] = CachedMedia(modality)
        return self._attach(sample, entries)

    def _after_decoding(self, sample: Any) -> Any:
        if not isinstance(sample, dict) or sample.get("id") is None:
            return sample
        entries = self.entries(str(sample["id"]))
        for modality in self._served(entries):
            if sample.get(modality) is not None and not isinstance(sample[modality], (list, tuple)):
                sample[modality] = CachedMedia(modality)  # decoded, but not preprocessed nor encoded
        return self._attach(sample, entries)

    def _attach(self, sample: dict[str, Any], entries: dict[str, Entry]) -> dict[str, Any]:
        # also without entries: the batch then tells the model which split and samples to store
        sample[CACHED_KEY] = {"split": self.plan.split, "keys": self._keys, "entries": entries}
        return sample


class CachedBatch:
    """A batch's cached features, built by the collate and given to the model as its explicit
    ``cached_features`` input: the split and sample ids of the rows (where a missing entry is stored),
    per slot the packed entries of its rows (:func:`~mmtrain.data.feature_entries.pack`, ``None`` rows
    where a sample has none) and the key they were read under, and per modality which rows were
    served (not decoded).

    A plain class, not a collection: Lightning leaves it on the CPU when it moves the batch.
    """

    def __init__(self, split: str, ids: list[str], keys: dict[str, str], packed: dict[str, dict[str, Any] | None],
                 served: dict[str, list[bool]]) -> None:
        self.split = split
        self.ids = ids
        self.keys = keys
        self.packed = packed
        self.served = served

    def __repr__(self) -> str:
        rows = {slot: sum(p["has"]) if p else 0 for slot, p in self.packed.items()}
        return (f"CachedBatch({self.split}, rows with entries {rows}, "
                f"served {({m: sum(s) for m, s in self.served.items()})})")


def gather_cached(samples: Sequence[Mapping[str, Any]], modalities: Sequence[str]) -> CachedBatch | None:
    """The :class:`CachedBatch` of collated samples, or ``None`` when none carries cached features (a
    split without cached slots, or samples that did not come through :class:`CachedFeatureDataset`)."""
    given = [s.get(CACHED_KEY) for s in samples]
    present = [g for g in given if g]
    if not present:
        return None
    keys = dict(present[0]["keys"])
    packed = {slot: pack([g["entries"].get(slot) if g else None for g in given]) for slot in keys}
    served = {m: [isinstance(s.get(m), CachedMedia) for s in samples] for m in modalities}
    ids = [str(s.get("id", i)) for i, s in enumerate(samples)]
    return CachedBatch(str(present[0]["split"]), ids, keys, packed, served)
