"""CH-SIMS layout: one ``label.csv`` for every split + one mp4 clip per utterance (``Raw/<video_id>/<clip_id>.mp4``).

CSV columns (CH-SIMS): ``video_id, clip_id, text, label, label_T, label_A, label_V, annotation, mode``.
``label`` is the utterance's sentiment in [-1, 1] (the regression target), ``label_T`` / ``label_A`` /
``label_V`` the scores annotators gave the text, audio and video alone (targets of auxiliary per-modality
heads, ``model.aux_heads`` with ``task.aux_weights``), ``annotation`` its class (Negative / Neutral /
Positive) and ``mode`` its split (``train``, ``valid``, ``test``). The whole clip is the sample (video frames
and its audio track). Numeric clip ids are zero-padded to ``clip_id_width`` digits in the file name (``1`` and
``0001`` both name ``0001.mp4``). The CSV is read and checked at construction, naming the row of a bad value;
clips are decoded only when a sample is read (an undecodable one is skipped and counted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmtrain.data.formats.common import LabelMap, MediaRef, Record, RecordDataset, check_unique, read_csv, require_dir, resolve
from mmtrain.data.formats.metadata import finite_target

OFFERED = ("video", "audio", "text")
SPLITS = {"train": "train", "valid": "valid", "val": "valid", "test": "test"}
REQUIRED = ("video_id", "clip_id", "text", "mode")
#: modality -> its CH-SIMS unimodal label column
UNIMODAL_COLUMNS = {"text": "label_T", "audio": "label_A", "video": "label_V"}
SIMS_CLASSES = ("Negative", "Neutral", "Positive")


class ChSimsDataset(RecordDataset):
    """The utterances of one CH-SIMS split: clip video and audio, text, sentiment score and unimodal scores.

    Args:
        label_csv: the dataset's ``label.csv``.
        raw_dir: the ``Raw`` folder holding ``<video_id>/<clip_id>.mp4``.
        split: ``train``, ``valid`` (or ``val``) or ``test``: the rows whose ``mode`` it is.
        target_columns: columns of the float regression target (``target``: e.g. ``[label]``).
        unimodal_columns: modality -> column of its own score (the sample's ``aux_targets``, which
            ``task.aux_weights`` heads learn); ``{}``: none.
        label_column, label_names: a class column (``annotation``) and its names for classification, or
            ``label_names`` empty for none.
        clip_id_width: zero-pad numeric clip ids to this many digits in file names (0: as written).
        num_frames: ``T``, frames sampled uniformly over the whole clip.
        modalities: which of ``video``, ``audio``, ``text`` to load.
        encoding: the CSV's text encoding.
        allow_outside_root: use clip paths that lead outside ``raw_dir`` as written (default: refused).

    Returns (per item): ``{"id": "<video_id>/<clip_id>", "video": uint8 [T,H,W,3], "audio": float32 [L]
    (16 kHz mono), "text": str, "target": [label], "aux_targets": {"text": label_T, "audio": label_A,
    "video": label_V}, "label": int (with label_names), "meta": {"video_path", "annotation", ...}}``, or a
    :class:`~mmtrain.data.skips.SkippedSample` when the clip cannot be decoded.
    """

    def __init__(
        self,
        *,
        label_csv: str,
        raw_dir: str,
        split: str,
        target_columns: Sequence[str] = ("label",),
        unimodal_columns: Mapping[str, str] | None = None,
        label_column: str = "annotation",
        label_names: Sequence[str] = (),
        clip_id_width: int = 4,
        num_frames: int = 8,
        modalities: Sequence[str] = OFFERED,
        encoding: str = "utf-8-sig",
        allow_outside_root: bool = False,
    ) -> None:
        owner = type(self).__name__
        if split not in SPLITS:
            raise ValueError(f"{owner}: split {split!r} is not one of {sorted(SPLITS)} (the CSV's mode column).")
        self.set_media_options(modalities, OFFERED, num_frames)
        self.split = SPLITS[split]
        self.target_columns = [str(c) for c in target_columns]
        columns = dict(UNIMODAL_COLUMNS if unimodal_columns is None else unimodal_columns)
        unknown = sorted(set(columns) - set(OFFERED))
        if unknown:
            raise ValueError(f"{owner}: unimodal_columns {unknown} are not modalities; use {list(OFFERED)}.")
        self.unimodal_columns = {str(m): str(c) for m, c in columns.items()}
        labels = LabelMap(label_names, owner)
        self.label_names = labels.names
        self.label_column = label_column if labels else None
        self.raw_dir, self.clip_id_width, self.allow_outside_root = str(raw_dir), int(clip_id_width), allow_outside_root
        require_dir(raw_dir, "CH-SIMS Raw clip")
        required = (*REQUIRED, *self.target_columns, *self.unimodal_columns.values(),
                    *([self.label_column] if self.label_column else []))
        rows = read_csv(label_csv, required=required, encoding=encoding)
        modes = sorted({row["mode"].strip() for _, row in rows} - set(SPLITS.values()))
        if modes:
            where = next(w for w, row in rows if row["mode"].strip() in modes)
            raise ValueError(f"{where}: mode {modes[0]!r} is not one of {sorted(set(SPLITS.values()))}.")
        mine = [(where, row) for where, row in rows if row["mode"].strip() == self.split]
        self.records = [self._record(where, row, labels) for where, row in mine]
        check_unique((str(r.fields["id"]), where) for r, (where, _) in zip(self.records, mine, strict=True))

    def _clip_name(self, clip_id: str) -> str:
        return clip_id.zfill(self.clip_id_width) if clip_id.isdigit() and self.clip_id_width else clip_id

    def _record(self, where: str, row: dict[str, str], labels: LabelMap) -> Record:
        video_id, clip_id = row["video_id"].strip(), row["clip_id"].strip()
        if not video_id or not clip_id:
            raise ValueError(f"{where}: empty video_id or clip_id")
        video_path = resolve(self.raw_dir, f"{video_id}/{self._clip_name(clip_id)}.mp4", where,
                             allow_outside_root=self.allow_outside_root)
        meta: dict[str, Any] = {k: v for k, v in row.items() if k != "text"}
        meta["video_path"] = video_path
        fields: dict[str, Any] = {
            "id": f"{video_id}/{clip_id}",
            "target": [finite_target(row[c], where, c) for c in self.target_columns],
            "meta": meta,
        }
        if self.unimodal_columns:
            fields["aux_targets"] = {m: finite_target(row[c], where, c) for m, c in self.unimodal_columns.items()}
        if self.label_column:
            fields["label"] = labels.index(row[self.label_column].strip(), where, self.label_column)
        if "text" in self.modalities:
            fields["text"] = row["text"]
        media = {m: MediaRef(m, video_path, num_frames=self.num_frames) for m in ("video", "audio") if m in self.modalities}
        return Record(fields, media)
