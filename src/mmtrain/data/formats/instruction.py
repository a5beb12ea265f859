"""Instruction data: JSONL (or a JSON list) of prompt/response pairs with optional media.

Record keys (names configurable)::

    {"id": "q1" (optional), "prompt": "What is shown?", "response": "A cat.",
     "image": "images/cat.png" (optional), "audio": "audio/q1.wav" (optional),
     "video": "videos/q1.mp4" (optional)}

Media paths are relative to ``root``. The sample's ``text`` is the prompt and its
``target_text`` the response (for LM heads with -100 masking of the prompt).

Alpaca-style records (``{"instruction": ..., "input": ..., "output": ...}``, the seeds' instruction set):
``prompt_key: instruction``, ``response_key: output``, ``input_key: input``; the text is the instruction,
then ``input_separator`` and the input when a record's input is not empty. A system prompt is the prompt
template's fixed text (LLM route) or ``data.processor.prompt.system`` (a whole VLM's chat template).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmtrain.data.formats.common import (
    MediaRef,
    Record,
    RecordDataset,
    as_str,
    check_unique,
    read_records,
    require,
    resolve,
)

OFFERED = ("video", "audio", "image", "text")


class InstructionDataset(RecordDataset):
    """Prompt -> response records, each with optional image, audio and video.

    Args:
        path: the ``.jsonl`` file (a JSON list also works).
        root: folder the media paths are relative to.
        prompt_key, response_key: record keys of the prompt and the response.
        input_key: record key of an input that follows the prompt (Alpaca's ``input``), or ``None``; a record
            without it, or with it empty, has the prompt alone.
        input_separator: written between the prompt and a non-empty input.
        id_key: record key of the sample id; records without it get ``"<file stem>/<index>"``.
        num_frames: ``T``, frames sampled uniformly over a whole video.
        modalities: which of ``video``, ``audio``, ``image``, ``text`` to load (``target_text``
            is always there).
        allow_outside_root: use media paths that lead outside ``root`` as written (default: refused).

    Returns (per item): ``{"id": str, "text": str (prompt), "target_text": str (response),
    "image": PIL RGB, "audio": float32 [L] (16 kHz mono), "video": uint8 [T,H,W,3],
    "meta": {"<modality>_path"}}`` (media the record lacks are absent), or a
    :class:`~mmtrain.data.skips.SkippedSample`. Unlabelled: ``label_names == []``.
    """

    def __init__(
        self,
        *,
        path: str,
        root: str,
        prompt_key: str = "prompt",
        response_key: str = "response",
        input_key: str | None = None,
        input_separator: str = "\n\n",
        id_key: str = "id",
        num_frames: int = 8,
        modalities: Sequence[str] = OFFERED,
        allow_outside_root: bool = False,
    ) -> None:
        self.set_media_options(modalities, OFFERED, num_frames)
        self.label_names: list[str] = []
        self.root = str(root)
        self.allow_outside_root = allow_outside_root
        self.prompt_key, self.response_key, self.id_key = prompt_key, response_key, id_key
        self.input_key, self.input_separator = input_key, str(input_separator)
        entries = read_records(path)
        stem = Path(path).stem
        self.records = [self._record(where, entry, i, stem) for i, (where, entry) in enumerate(entries)]
        check_unique((str(r.fields["id"]), where) for r, (where, _) in zip(self.records, entries, strict=True))

    def _record(self, where: str, entry: dict[str, Any], index: int, stem: str) -> Record:
        sample_id = entry.get(self.id_key)
        paths = {
            m: resolve(self.root, as_str(entry[m], where, m), f"{where} {m!r}", allow_outside_root=self.allow_outside_root)
            for m in ("video", "audio", "image")
            if entry.get(m) is not None
        }
        fields: dict[str, Any] = {
            "id": f"{stem}/{index}" if sample_id is None else str(sample_id),
            "target_text": as_str(require(entry, self.response_key, where), where, self.response_key),
            "meta": {f"{m}_path": p for m, p in paths.items()},
        }
        prompt = as_str(require(entry, self.prompt_key, where), where, self.prompt_key)
        given = entry.get(self.input_key) if self.input_key else None
        if given is not None and as_str(given, where, str(self.input_key)).strip():
            prompt = prompt + self.input_separator + as_str(given, where, str(self.input_key))
        if "text" in self.modalities:
            fields["text"] = prompt
        media = {
            m: MediaRef(m, p, num_frames=self.num_frames) for m, p in paths.items() if m in self.modalities
        }
        return Record(fields, media)
