"""Annotation files: per-clip label JSON, and views of the same items for other tasks.

Per split, each segment is an item with a clean still image (``images/<split>/<id>.png``) and its
clean spoken digit (``audio/<split>/<id>.wav``). From those:

- ``parquet/<split>.parquet``: ``sample_id, image_bytes (PNG), caption, question, answer, label``
  (+ ``image_source``), in several row groups;
- ``pairs/<split>.csv``: ``img1, img2, score1, score2, label`` (First / Second / Similar by digit value);
- ``metadata/<split>_audio_text.jsonl`` (``audio_path, text``, ...),
  ``metadata/<split>_image_text.jsonl`` (``image_path, caption``, ...) and
  ``metadata/<split>_image_audio_text.jsonl`` (``image_path, audio_path, caption, text``, ...: the
  same segment's still and spoken digit together, for tri-modal alignment);
- ``instruction/<split>.jsonl``: ``id, image, prompt, response, kind`` — questions about the still
  (which digit, even or odd, the digit plus one, greater than four), ``QUESTIONS_PER_ITEM`` per item,
  for visual question answering with an LM decoder.

All paths inside these files are relative to the data set root.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mmtrain.data.demo.images import clean_png_array
from mmtrain.data.demo.plan import ClipPlan
from mmtrain.data.demo.spec import MODALITIES, SPLITS, TRANSCRIPTS, WORDS, MediaFormat
from mmtrain.data.demo.voices import write_wav

QUESTION = "Which digit is shown?"
SIMILAR_SHARE = 0.2  # share of pairs showing the same digit twice
PAIRS_PER_ITEM = 3  # each item is the first image of this many pairs (dense enough for Bradley-Terry)
QUESTIONS_PER_ITEM = 2
# Question kind -> (question, answer of digit d). Answers are single words.
QUESTIONS = {
    "digit": ("Which digit is shown?", lambda d: WORDS[d]),
    "parity": ("Is the digit even or odd?", lambda d: "odd" if d % 2 else "even"),
    "plus_one": ("What is the digit plus one?", lambda d: WORDS[d + 1] if d < 9 else "ten"),
    "greater": ("Is the digit greater than four?", lambda d: "yes" if d > 4 else "no"),
}
#: Every answer the instruction view can hold (the label set of constrained answering).
ANSWERS = (*WORDS, "ten", "even", "odd", "yes", "no")


@dataclass(frozen=True)
class Item:
    """One segment as an item of the image/audio views."""

    sample_id: str
    label: int
    image_path: str  # relative to the root
    audio_path: str
    image_source: str
    speaker: str
    language: str


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def clip_labels(plan: ClipPlan, media: MediaFormat) -> dict:
    """The label JSON of a clip (schema: ``video``, ``segments[id,start,end,text,label,speaker,
    image_source,corrupted]`` plus ``label_id``, ``language``, ``corruption`` and ``decoys``)."""
    segments = []
    for segment in plan.segments:
        start = round(segment.index * media.segment_seconds, 6)
        kinds = segment.corruption
        decoys = {m: WORDS[segment.decoys[m]] for m in MODALITIES if kinds.get(m) in ("decoy", "swap")}
        segments.append({
            "id": f"s{segment.index}", "start": start, "end": round(start + media.segment_seconds, 6),
            "text": segment.text, "label": WORDS[segment.label], "label_id": segment.label,
            "speaker": plan.voice.id, "language": plan.voice.language, "image_source": segment.image.ref,
            "corrupted": [m for m in MODALITIES if m in kinds],
            "corruption": {m: kinds[m] for m in MODALITIES if m in kinds}, "decoys": decoys,
        })
    return {"video": f"{plan.name}.mp4", "segments": segments}


def write_item_media(root: Path, plan: ClipPlan, clean_audio: list[np.ndarray], media: MediaFormat) -> list[Item]:
    """Write each segment's clean PNG and WAV; return the items."""
    items = []
    for segment, speech in zip(plan.segments, clean_audio):
        sample_id = plan.sample_id(segment.index)
        image_path = f"images/{plan.split}/{sample_id}.png"
        audio_path = f"audio/{plan.split}/{sample_id}.wav"
        pixels = clean_png_array(segment.image, frame=media.frame_size, box=media.digit_size)
        Image.fromarray(pixels).save(root / image_path, format="PNG", optimize=False)
        write_wav(root / audio_path, speech, media.sample_rate)
        items.append(Item(sample_id, segment.label, image_path, audio_path, segment.image.ref,
                          plan.voice.id, plan.voice.language))
    return items


def caption(label: int) -> str:
    return f"a handwritten {WORDS[label]}"


def write_parquet(root: Path, split: str, items: list[Item], *, row_group_size: int) -> Path:
    """``parquet/<split>.parquet`` with PNG bytes, caption, question/answer and the integer label."""
    table = pa.table({
        "sample_id": pa.array([i.sample_id for i in items], pa.string()),
        "image_bytes": pa.array([(root / i.image_path).read_bytes() for i in items], pa.binary()),
        "caption": pa.array([caption(i.label) for i in items], pa.string()),
        "question": pa.array([QUESTION] * len(items), pa.string()),
        "answer": pa.array([WORDS[i.label] for i in items], pa.string()),
        "label": pa.array([i.label for i in items], pa.int64()),
        "image_source": pa.array([i.image_source for i in items], pa.string()),
    })
    path = root / "parquet" / f"{split}.parquet"
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def pair_rows(items: list[Item], rng: np.random.Generator, per_item: int = PAIRS_PER_ITEM) -> list[dict]:
    """``per_item`` pairs per item (each item is the first image of ``per_item`` pairs, in shuffled
    rounds, so every item is compared about ``2 * per_item`` times): ``SIMILAR_SHARE`` of them the
    same digit (two different images when the split has them), the rest two different digits;
    label by digit value."""
    by_label: dict[int, list[Item]] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    other_digits = {label: [i for i in items if i.label != label] for label in by_label}
    rows = []
    rounds = [index for _ in range(per_item) for index in rng.permutation(len(items)).tolist()]
    for index in rounds:
        first = items[index]
        others = other_digits[first.label]
        same = [i for i in by_label[first.label] if i is not first] or [first]
        pool = same if (rng.random() < SIMILAR_SHARE or not others) else others
        second = pool[int(rng.integers(len(pool)))]
        verdict = "First" if first.label > second.label else "Second" if first.label < second.label else "Similar"
        rows.append({"img1": first.image_path, "img2": second.image_path, "score1": first.label,
                     "score2": second.label, "label": verdict})
    return rows


def write_pairs(root: Path, split: str, items: list[Item], seed: int) -> Path:
    rng = np.random.default_rng([seed, SPLITS.index(split), 777])
    path = root / "pairs" / f"{split}.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["img1", "img2", "score1", "score2", "label"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(pair_rows(items, rng))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_metadata(root: Path, split: str, items: list[Item]) -> list[Path]:
    audio_rows = [{"audio_path": i.audio_path, "text": WORDS[i.label], "label": i.label,
                   "transcript": TRANSCRIPTS[i.language][i.label], "language": i.language, "speaker": i.speaker}
                  for i in items]
    image_rows = [{"image_path": i.image_path, "caption": caption(i.label), "label": i.label,
                   "image_source": i.image_source} for i in items]
    # Items with image, audio and text together (tri-modal alignment): the clean still and the
    # clean spoken digit of the same segment, with the image view's caption.
    trimodal_rows = [{"sample_id": i.sample_id, "image_path": i.image_path, "audio_path": i.audio_path,
                      "caption": caption(i.label), "text": WORDS[i.label], "label": i.label,
                      "language": i.language, "speaker": i.speaker, "image_source": i.image_source}
                     for i in items]
    return [write_jsonl(root / "metadata" / f"{split}_audio_text.jsonl", audio_rows),
            write_jsonl(root / "metadata" / f"{split}_image_text.jsonl", image_rows),
            write_jsonl(root / "metadata" / f"{split}_image_audio_text.jsonl", trimodal_rows)]


def instruction_rows(items: list[Item], rng: np.random.Generator, per_item: int = QUESTIONS_PER_ITEM) -> list[dict]:
    """``per_item`` distinct question kinds per item, drawn at random."""
    kinds = list(QUESTIONS)
    rows = []
    for item in items:
        for kind in (kinds[k] for k in rng.choice(len(kinds), size=per_item, replace=False).tolist()):
            question, answer = QUESTIONS[kind]
            rows.append({"id": f"{item.sample_id}/{kind}", "image": item.image_path, "prompt": question,
                         "response": answer(item.label), "kind": kind, "label": item.label})
    return rows


def write_instruction(root: Path, split: str, items: list[Item], seed: int) -> Path:
    rng = np.random.default_rng([seed, SPLITS.index(split), 888])
    return write_jsonl(root / "instruction" / f"{split}.jsonl", instruction_rows(items, rng))


def write_split_views(root: Path, split: str, items: list[Item], seed: int, *, row_group_size: int) -> list[Path]:
    """All tabular views of a split; returns the files written."""
    return [write_parquet(root, split, items, row_group_size=row_group_size), write_pairs(root, split, items, seed),
            *write_metadata(root, split, items), write_instruction(root, split, items, seed)]

