"""MELD-style utterance CSV + one mp4 clip per utterance (``dia{D}_utt{U}.mp4``).

CSV columns (MELD): ``Sr No., Utterance, Speaker, Emotion, Sentiment, Dialogue_ID, Utterance_ID,
Season, Episode, StartTime, EndTime``. Only ``Utterance``, ``Dialogue_ID``, ``Utterance_ID`` and the
label column (``Emotion`` by default; ``Sentiment`` also works) are required. The whole clip is the
sample; ``StartTime``/``EndTime`` refer to the source episode and are kept in ``meta`` with every
other column. The CSV is read at construction (``"meld.csv row 14: Emotion 'joyful' is not one of
[...]"``; row 1 is the header); clips are decoded only when a sample is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmtrain.data.formats.common import (
    LabelMap,
    MediaRef,
    Record,
    RecordDataset,
    as_int,
    check_unique,
    read_csv,
    require_dir,
    resolve,
)

OFFERED = ("video", "audio", "text")
MELD_EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
REQUIRED = ("Utterance", "Dialogue_ID", "Utterance_ID")


class MeldDataset(RecordDataset):
    """MELD utterances: clip video and audio, utterance text, emotion (or sentiment) label.

    Args:
        csv_path: the utterance CSV (e.g. ``train_sent_emo.csv``).
        video_dir: folder of clips named by ``clip_pattern``.
        label_names: class names in index order (MELD emotions: ``MELD_EMOTIONS``).
        label_column: the CSV column holding the label.
        clip_pattern: clip file name from ``{dialogue}`` and ``{utterance}`` ids.
        num_frames: ``T``, frames sampled uniformly over the whole clip.
        modalities: which of ``video``, ``audio``, ``text`` to load.
        encoding: the CSV's text encoding.
        allow_outside_root: use media paths that lead outside the data root as written (default: refused).

    Returns (per item): ``{"id": "dia{D}_utt{U}", "video": uint8 [T,H,W,3], "audio": float32 [L]
    (16 kHz mono, whole clip), "text": str, "label": int, "meta": {"video_path", "label_name",
    "Speaker", "Sentiment", "StartTime", "EndTime", ... every other CSV column}}``, or a
    :class:`~mmtrain.data.skips.SkippedSample` when the clip cannot be decoded.
    """

    def __init__(
        self,
        *,
        csv_path: str,
        video_dir: str,
        label_names: Sequence[str] = MELD_EMOTIONS,
        label_column: str = "Emotion",
        clip_pattern: str = "dia{dialogue}_utt{utterance}.mp4",
        num_frames: int = 8,
        modalities: Sequence[str] = OFFERED,
        encoding: str = "utf-8-sig",
        allow_outside_root: bool = False,
    ) -> None:
        owner = type(self).__name__
        self.set_media_options(modalities, OFFERED, num_frames)
        labels = LabelMap(label_names, owner)
        if not labels:
            raise ValueError(f"{owner}: label_names is empty; list the class names in index order")
        self.label_names = labels.names
        self.label_column = label_column
        self.video_dir = str(video_dir)
        self.clip_pattern = clip_pattern
        self.allow_outside_root = allow_outside_root
        require_dir(video_dir, "video")
        rows = read_csv(csv_path, required=(*REQUIRED, label_column), encoding=encoding)
        self.records = [self._record(where, row, labels) for where, row in rows]
        check_unique((str(r.fields["id"]), where) for r, (where, _) in zip(self.records, rows, strict=True))

    def _record(self, where: str, row: dict[str, str], labels: LabelMap) -> Record:
        dialogue = as_int(row["Dialogue_ID"].strip(), where, "Dialogue_ID")
        utterance = as_int(row["Utterance_ID"].strip(), where, "Utterance_ID")
        label_name = row[self.label_column].strip()
        video_path = resolve(self.video_dir, self.clip_pattern.format(dialogue=dialogue, utterance=utterance), where,
                             allow_outside_root=self.allow_outside_root)
        meta: dict[str, Any] = {k: v for k, v in row.items() if k not in ("Utterance", self.label_column)}
        meta.update(video_path=video_path, label_name=label_name, dialogue=dialogue, utterance=utterance)
        fields: dict[str, Any] = {
            "id": f"dia{dialogue}_utt{utterance}",
            "label": labels.index(label_name, where, self.label_column),
            "meta": meta,
        }
        if "text" in self.modalities:
            fields["text"] = row["Utterance"]
        media = {
            m: MediaRef(m, video_path, num_frames=self.num_frames) for m in ("video", "audio") if m in self.modalities
        }
        return Record(fields, media)
