"""mp4 videos + one label JSON per video; one sample per labelled segment (chunk level).

Layout: ``video_dir/*.mp4`` and ``label_dir/*.json``. Label JSON schema::

    {"video": "clip_0001.mp4" (optional, relative to video_dir; default <json stem>.mp4),
     "segments": [{"id": "s0" (optional), "start": 0.0, "end": 1.0, "text": "...", "<label_key>": "joy"}, ...]}

``start``/``end`` are seconds in the video; ``end > start``. ``text`` is required when the text
modality is loaded. Every ``*.json`` in ``label_dir`` is read (sorted by name) at construction, so
a missing key, a bad time or an unknown label stops there with the file and segment index
(``"labels/clip_3.json segment 2: no key 'end'"``). The mp4 files are only opened when a sample is
read; a missing or broken one makes that sample a :class:`~mmtrain.data.skips.SkippedSample`.
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
    check_unique,
    read_json,
    require,
    require_dir,
    resolve,
)

OFFERED = ("video", "audio", "text")


class Mp4LabelJsonDataset(RecordDataset):
    """Segments of mp4 clips with text and a class label, decoded per segment.

    Args:
        video_dir: folder of mp4 files.
        label_dir: folder of label JSON files (schema in the module docstring).
        label_names: class names in index order; every segment's label must be one of them.
        label_key: the segment key holding the label.
        num_frames: ``T``, frames sampled uniformly over each segment.
        modalities: which of ``video``, ``audio``, ``text`` to load.
        allow_outside_root: use media paths that lead outside the data root as written (default: refused).

    Returns (per item): ``{"id": "<json stem>/<segment id or index>", "video": uint8 [T,H,W,3],
    "audio": float32 [L] (16 kHz mono, L ~ (end - start) * 16000), "text": str, "label": int,
    "meta": {"video_path", "label_file", "segment", "start", "end", "label_name"}}``,
    or a :class:`~mmtrain.data.skips.SkippedSample` when the mp4 cannot be decoded.
    """

    def __init__(
        self,
        *,
        video_dir: str,
        label_dir: str,
        label_names: Sequence[str],
        label_key: str = "label",
        num_frames: int = 8,
        modalities: Sequence[str] = OFFERED,
        allow_outside_root: bool = False,
    ) -> None:
        owner = type(self).__name__
        self.set_media_options(modalities, OFFERED, num_frames)
        self.video_dir = str(video_dir)
        self.label_key = label_key
        self.allow_outside_root = allow_outside_root
        labels = LabelMap(label_names, owner)
        if not labels:
            raise ValueError(f"{owner}: label_names is empty; list the class names in index order")
        self.label_names = labels.names
        require_dir(video_dir, "video")
        files = sorted(require_dir(label_dir, "label").glob("*.json"))
        if not files:
            raise FileNotFoundError(f"label folder {label_dir} holds no *.json file")
        self.records = [record for file in files for record in self._parse(file, labels)]
        check_unique(
            (str(r.fields["id"]), f"{r.fields['meta']['label_file']} segment {r.fields['meta']['segment']}")
            for r in self.records
        )

    def _parse(self, file: Path, labels: LabelMap) -> list[Record]:
        content = read_json(file)
        if not isinstance(content, dict):
            raise ValueError(f"{file}: expected a JSON object with 'segments', got {type(content).__name__}")
        segments = require(content, "segments", str(file))
        if not isinstance(segments, list):
            raise ValueError(f"{file}: 'segments' must be a list, got {type(segments).__name__}")
        video = as_str(content.get("video", f"{file.stem}.mp4"), str(file), "video")
        video_path = resolve(self.video_dir, video, f"{file} 'video'", allow_outside_root=self.allow_outside_root)
        return [self._segment(file, i, segment, video_path, labels) for i, segment in enumerate(segments)]

    def _segment(self, file: Path, index: int, segment: Any, video_path: str, labels: LabelMap) -> Record:
        where = f"{file} segment {index}"
        if not isinstance(segment, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(segment).__name__}")
        start = as_float(require(segment, "start", where), where, "start")
        end = as_float(require(segment, "end", where), where, "end")
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
            raise ValueError(f"{where}: needs 0 <= start < end, both finite (seconds), got start={start}, end={end}")
        label_name = require(segment, self.label_key, where)
        segment_id = str(segment.get("id", index))
        fields: dict[str, Any] = {
            "id": f"{file.stem}/{segment_id}",
            "label": labels.index(label_name, where, self.label_key),
            "meta": {
                "video_path": video_path, "label_file": str(file), "segment": index,
                "start": start, "end": end, "label_name": str(label_name),
            },
        }
        if "text" in self.modalities:
            fields["text"] = as_str(require(segment, "text", where), where, "text")
        media = {
            modality: MediaRef(modality, video_path, start=start, end=end, num_frames=self.num_frames)
            for modality in ("video", "audio")
            if modality in self.modalities
        }
        return Record(fields, media)
