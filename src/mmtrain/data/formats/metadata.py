"""Audio-text and image-text metadata: a JSON list of objects or JSONL, one object a line.

Record keys (names configurable): ``audio_path`` and/or ``image_path`` (relative to ``root``; at
least one per record), ``text`` or ``caption``, optional ``sample_id``, optional label::

    {"sample_id": "a1", "audio_path": "audio/a1.wav", "text": "a dog barks", "label": "dog"}
    {"image_path": "images/b.jpg", "caption": "a red bicycle"}

The metadata file is read at construction (errors name the file and ``item N`` for a JSON list or
``row N`` for JSONL); media files are decoded when a sample is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmtrain.data.formats.common import (
    LabelMap,
    MediaRef,
    Record,
    RecordDataset,
    as_float,
    as_str,
    check_modalities,
    check_unique,
    read_records,
    require,
    resolve,
)

OFFERED = ("audio", "image", "text")


def finite_target(value: Any, where: str, key: str) -> float:
    """A regression target: a finite number (a NaN or infinite target would poison every step)."""
    number = as_float(value, where, key)
    if not math.isfinite(number):
        raise ValueError(f"{where}: {key} {value!r} is not a finite number (regression target)")
    return number
TEXT_KEYS = ("text", "caption")


class MetadataDataset(RecordDataset):
    """Audio and/or image with a text (and optionally a label) per record.

    Args:
        path: the metadata ``.json`` (a list of objects) or ``.jsonl`` file.
        root: folder the media paths are relative to.
        audio_key, image_key: record keys holding the media paths.
        text_key: record key of the text; None takes ``text``, else ``caption``.
        id_key: record key of the sample id; records without it get ``"<file stem>/<index>"``.
        label_key: record key of the class name, or None for unlabelled data.
        label_names: class names in index order (required with ``label_key``; else empty).
        target_key: record key (or list of keys) of float regression targets, e.g. a sentiment score;
            the sample's ``target`` is the list of their values (task=regression trains on it).
        answer_key: record key of the LM's answer (``target_text``: e.g. ``caption``, for a model that learns to
            write it; may be the same key as ``text_key``), or None.
        modalities: which of ``audio``, ``image``, ``text`` to load.
        allow_outside_root: use media paths that lead outside ``root`` as written (default: refused).

    Returns (per item): ``{"id": str, "audio": float32 [L] (16 kHz mono), "image": PIL RGB,
    "text": str, "label": int (if labelled), "target": list[float] (with ``target_key``), "target_text": str (with ``answer_key``), "meta": {"audio_path", "image_path"}}`` (a modality
    the record lacks is absent), or a :class:`~mmtrain.data.skips.SkippedSample`.
    """

    def __init__(
        self,
        *,
        path: str,
        root: str,
        audio_key: str = "audio_path",
        image_key: str = "image_path",
        text_key: str | None = None,
        id_key: str = "sample_id",
        label_key: str | None = None,
        label_names: Sequence[str] = (),
        target_key: str | Sequence[str] | None = None,
        answer_key: str | None = None,
        modalities: Sequence[str] = OFFERED,
        allow_outside_root: bool = False,
    ) -> None:
        owner = type(self).__name__
        self.modalities = check_modalities(modalities, OFFERED, owner)
        labels = LabelMap(label_names, owner)
        if (label_key is None) != (not labels):
            raise ValueError(f"{owner}: give label_key and label_names together (or neither)")
        self.label_names = labels.names
        self.root = str(root)
        self.allow_outside_root = allow_outside_root
        self.keys = {"audio": audio_key, "image": image_key}
        self.text_key, self.id_key, self.label_key = text_key, id_key, label_key
        self.target_keys = [target_key] if isinstance(target_key, str) else list(target_key or [])
        self.answer_key = answer_key
        entries = read_records(path)
        stem = Path(path).stem
        self.records = [self._record(where, entry, i, stem, labels) for i, (where, entry) in enumerate(entries)]
        check_unique((str(r.fields["id"]), where) for r, (where, _) in zip(self.records, entries, strict=True))

    def _record(self, where: str, entry: dict[str, Any], index: int, stem: str, labels: LabelMap) -> Record:
        present = {m: key for m, key in self.keys.items() if entry.get(key) is not None}
        if not present:
            raise ValueError(f"{where}: no key {self.keys['audio']!r} or {self.keys['image']!r}")
        paths = {m: resolve(self.root, as_str(entry[key], where, key), f"{where} {key!r}",
                            allow_outside_root=self.allow_outside_root) for m, key in present.items()}
        sample_id = entry.get(self.id_key)
        fields: dict[str, Any] = {
            "id": f"{stem}/{index}" if sample_id is None else str(sample_id),
            "meta": {f"{m}_path": p for m, p in paths.items()},
        }
        if "text" in self.modalities:
            key = self.text_key or next((k for k in TEXT_KEYS if entry.get(k) is not None), None)
            if key is None:
                raise ValueError(f"{where}: no key {TEXT_KEYS[0]!r} or {TEXT_KEYS[1]!r}")
            fields["text"] = as_str(require(entry, key, where), where, key)
        if self.label_key is not None:
            fields["label"] = labels.index(require(entry, self.label_key, where), where, self.label_key)
        if self.target_keys:
            fields["target"] = [finite_target(require(entry, key, where), where, key) for key in self.target_keys]
        if self.answer_key is not None:
            fields["target_text"] = as_str(require(entry, self.answer_key, where), where, self.answer_key)
        media = {m: MediaRef(m, p) for m, p in paths.items() if m in self.modalities}
        return Record(fields, media)
