"""A folder of media files as unlabelled samples: what ``mmtrain predict --data <folder>`` reads.

Every file under ``root`` (recursively, in sorted order) whose suffix names a modality joins the sample
of its path without the suffix, so ``clips/a.mp4``, ``clips/a.wav`` and ``clips/a.txt`` make one sample
``clips/a`` with video, audio and text. A video file also gives the sample its audio when no audio file
does and the video has an audio stream. Files of modalities the model lacks are not read.

=========  ==========================================================
modality   suffixes
=========  ==========================================================
video      .mp4 .m4v .mov .mkv .webm .avi
audio      .wav .flac .mp3 .ogg .opus .m4a .aac
image      .png .jpg .jpeg .bmp .webp .gif .tif .tiff
text       .txt (UTF-8; the whole file, stripped)
=========  ==========================================================
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av

from mmtrain.data.formats.common import MediaRef, Record, RecordDataset, require_dir, resolve

SUFFIXES = {
    "video": (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"),
    "audio": (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac"),
    "image": (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"),
    "text": (".txt",),
}
MODALITY_OF = {suffix: modality for modality, suffixes in SUFFIXES.items() for suffix in suffixes}
MAX_TEXT_BYTES = 1 << 20


def has_audio_stream(path: str) -> bool:
    """Whether the container at ``path`` holds an audio stream (metadata only; False when it cannot be
    opened: the video read then reports the file)."""
    try:
        with av.open(path) as container:
            return bool(container.streams.audio)
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        return False


class FolderDataset(RecordDataset):
    """Unlabelled samples from the media files under a folder (see the module docstring).

    Args:
        root: the folder.
        modalities: the modalities to read (the model's); files of others are ignored.
        num_frames: ``T``, frames sampled uniformly over each whole video.
        allow_outside_root: follow links that lead outside ``root`` (default: refused by name).

    Returns (per item): ``{"id": "<relative path without suffix>", "video": uint8 [T,H,W,3], "audio":
    float32 [L] (16 kHz mono), "image": PIL image, "text": str, "meta": {"files": {modality: path}}}`` with
    the modalities the sample has, or a :class:`~mmtrain.data.skips.SkippedSample` when a file cannot be
    decoded. ``label_names`` is empty.
    """

    def __init__(self, *, root: str | Path, modalities: Sequence[str], num_frames: int = 8,
                 allow_outside_root: bool = False) -> None:
        owner = type(self).__name__
        self.set_media_options(modalities, tuple(SUFFIXES), num_frames)
        self.root = require_dir(root, "prediction input")
        self.label_names: list[str] = []
        groups: dict[str, dict[str, str]] = defaultdict(dict)
        self.ignored: list[str] = []  # files of no wanted modality
        for file in sorted(p for p in self.root.rglob("*") if p.is_file()):
            relative = file.relative_to(self.root)
            modality = MODALITY_OF.get(file.suffix.lower())
            if modality not in self.modalities:
                self.ignored.append(relative.as_posix())
                continue
            path = resolve(self.root, relative.as_posix(), f"{owner} {self.root}", allow_outside_root=allow_outside_root)
            sample_id = relative.with_suffix("").as_posix()
            if modality in groups[sample_id]:
                raise ValueError(f"{self.root}: sample {sample_id!r} has two {modality} files, "
                                 f"{Path(groups[sample_id][modality]).name} and {file.name}; keep one per sample.")
            groups[sample_id][modality] = path
        if not groups:
            wanted = sorted(s for m in self.modalities for s in SUFFIXES[m])
            raise FileNotFoundError(f"{self.root} holds no file the model can read: it reads {list(self.modalities)} "
                                    f"({' '.join(wanted)}); {len(self.ignored)} other file(s) ignored.")
        self.records = [self._record(sample_id, files) for sample_id, files in sorted(groups.items())]

    def _record(self, sample_id: str, files: dict[str, str]) -> Record:
        if "audio" in self.modalities and "audio" not in files and "video" in files and has_audio_stream(files["video"]):
            files = {**files, "audio": files["video"]}
        fields: dict[str, Any] = {"id": sample_id, "meta": {"files": dict(files)}}
        if "text" in files:
            fields["text"] = self._text(Path(files["text"]))
        media = {m: MediaRef(m, path, num_frames=self.num_frames) for m, path in files.items() if m != "text"}
        return Record(fields, media)

    @staticmethod
    def _text(file: Path) -> str:
        size = file.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise ValueError(f"{file}: {size} bytes; a text sample is at most {MAX_TEXT_BYTES} bytes.")
        try:
            return file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as err:
            raise ValueError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start}).") from err
