"""Helpers shared by the dataset formats: annotation reading with located errors, labels, paths.

Annotation problems (a missing or malformed CSV/JSON/JSONL file, a missing column or key, a value
of the wrong type, an unknown label) raise at construction with the file and the place in it:

- CSV and JSONL: ``"<file> row N"`` where ``N`` is the line the record starts on (the CSV header is
  row 1, so a spreadsheet and a text editor show the same number);
- a JSON list: ``"<file> item N"`` (0-based index in the list);
- nested places are appended by the format (``"labels/clip_3.json segment 2: no key 'end'"``).

Media problems are not annotation problems: a :class:`RecordDataset` decodes lazily through
:func:`~mmtrain.data.skips.load_media`, so an unreadable media file becomes a
:class:`~mmtrain.data.skips.SkippedSample` naming the file and modality.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from mmtrain.data.media import MediaFile, read_audio_segment, read_video_segment
from mmtrain.data.images import read_image
from mmtrain.data.skips import SkippedSample, load_media

MEDIA_MODALITIES = ("video", "audio", "image")
STREAM_MODALITIES = ("video", "audio")  # streams of a container file; one file's are read through one open


# ---------------------------------------------------------------------------------------- files
def require_file(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`Path`, or ``FileNotFoundError`` saying which ``what`` is missing."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist" + (" (it is a folder)" if file.is_dir() else ""))
    return file


def require_dir(path: str | Path, what: str) -> Path:
    """``path`` as a :class:`Path`, or ``FileNotFoundError`` saying which ``what`` folder is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {path} does not exist")
    return folder


OUTSIDE_ROOT_KEY = "allow_outside_root"


def resolve(root: str | Path, relative: str, where: str = "", *, allow_outside_root: bool = False) -> str:
    """``relative`` joined to ``root`` (an absolute ``relative`` is kept as is), with symlinks resolved.

    A data file may only name media inside its data root: ``../../etc/passwd``, an absolute path
    elsewhere and a symlink that leads out are refused, unless the dataset's ``allow_outside_root``
    is set (then the path is used as written).

    Raises:
        ValueError: naming ``where`` (file and row), the path, where it leads and the key to opt out.
    """
    path = Path(relative)
    joined = path if path.is_absolute() else Path(root) / path
    if allow_outside_root:
        return str(joined)
    base, real = os.path.realpath(root), os.path.realpath(joined)
    if os.path.commonpath([base, real]) != base:
        raise ValueError(
            f"{where or root}: {relative!r} leads to {real}, outside the data root {base}. Media paths in a "
            f"data file stay inside its root; if you trust this file, set {OUTSIDE_ROOT_KEY}: true on the dataset "
            f"(e.g. data.train.{OUTSIDE_ROOT_KEY}=true)."
        )
    return real


def read_csv(
    path: str | Path, *, required: Sequence[str], encoding: str = "utf-8-sig"
) -> list[tuple[str, dict[str, str]]]:
    """Rows of a CSV file with a header, each with its location ``"<file> row N"``.

    Args:
        path: the CSV file.
        required: columns that must be in the header.
        encoding: text encoding (``utf-8-sig`` also reads plain UTF-8).

    Raises:
        FileNotFoundError: no such file.
        ValueError: undecodable text, no header, a missing column, or a row with extra cells.
    """
    file = require_file(path, "annotation file")
    rows: list[tuple[str, dict[str, str]]] = []
    try:
        with file.open(newline="", encoding=encoding) as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames
            if not header:
                raise ValueError(f"{path}: empty CSV file (no header row)")
            missing = [name for name in required if name not in header]
            if missing:
                raise ValueError(f"{path}: no column {missing[0]!r}; the header has {list(header)}")
            start = reader.line_num + 1
            for row in reader:
                where = f"{path} row {start}"
                if None in row:
                    raise ValueError(f"{where}: more cells than the {len(header)} header columns")
                rows.append((where, row))
                start = reader.line_num + 1
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not {encoding} text ({err}); set the dataset's encoding") from err
    except csv.Error as err:
        raise ValueError(f"{path} row {reader.line_num}: malformed CSV ({err})") from err
    return rows


def read_json(path: str | Path) -> Any:
    """The parsed content of a JSON file; malformed JSON names the file, line and column."""
    file = require_file(path, "annotation file")
    try:
        return json.loads(file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} row {err.lineno}: malformed JSON ({err.msg}, column {err.colno})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to read (more than Python's recursion limit)") from None


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """Objects from a JSON list (``item N``) or JSONL, one object a line (``row N``).

    A file whose first non-blank character is ``[`` is a JSON list; anything else is JSONL
    (blank lines are skipped).

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed JSON, or an entry that is not an object.
    """
    file = require_file(path, "annotation file")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from err
    if text.lstrip().startswith("["):
        entries = [(f"{path} item {i}", entry) for i, entry in enumerate(read_json(file))]
    else:
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append((f"{path} row {number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} row {number}: malformed JSON ({err.msg}, column {err.colno})") from err
            except RecursionError:
                raise ValueError(f"{path} row {number}: JSON nested too deeply to read") from None
    for where, entry in entries:
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if not entries:
        raise ValueError(f"{path}: no records")
    return entries


# ---------------------------------------------------------------------------------------- values
def require(record: dict[str, Any], key: str, where: str) -> Any:
    """``record[key]``, or ``ValueError("<where>: no key '<key>'")``; ``null`` counts as missing."""
    if key not in record or record[key] is None:
        raise ValueError(f"{where}: no key {key!r}" + (" (it is null)" if key in record else ""))
    return record[key]


def as_float(value: Any, where: str, key: str) -> float:
    """``value`` as a float (numbers or numeric strings)."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: {key} {value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} {value!r} is not a number") from None


def as_int(value: Any, where: str, key: str) -> int:
    """``value`` as an int (ints or integer strings; ``"3.0"`` is refused)."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{where}: {key} {value!r} is not an integer")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} {value!r} is not an integer") from None


def as_str(value: Any, where: str, key: str) -> str:
    """``value`` if it is a string."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key} must be a string, got {type(value).__name__} {value!r}")
    return value


def check_unique(ids: Iterable[tuple[str, str]]) -> None:
    """Raise on the first id given twice; ``ids`` holds ``(id, where)`` pairs."""
    first: dict[str, str] = {}
    for sample_id, where in ids:
        if sample_id in first:
            raise ValueError(f"{where}: sample id {sample_id!r} is already used at {first[sample_id]}")
        first[sample_id] = where


class LabelMap:
    """Class names in index order, and the lookup of a label value to its index.

    Args:
        label_names: class names; a label value must be one of them (exact match). An ``int``
            value (JSON/parquet) is taken as an index when ``0 <= value < len(label_names)``.
        owner: the dataset's name, for errors.
    """

    def __init__(self, label_names: Sequence[str], owner: str) -> None:
        names = [str(name) for name in label_names]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"{owner}: label_names lists {duplicated[0]!r} twice")
        self.names = names
        self._index = {name: i for i, name in enumerate(names)}

    def __bool__(self) -> bool:
        return bool(self.names)

    def index(self, value: Any, where: str, key: str) -> int:
        """Index of ``value``, or ``ValueError("<where>: <key> 'x' is not one of [...]")``."""
        if isinstance(value, str) and value in self._index:
            return self._index[value]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(self.names):
            return value
        raise ValueError(f"{where}: {key} {value!r} is not one of {self.names}")


def check_modalities(modalities: Sequence[str], offered: Sequence[str], owner: str) -> tuple[str, ...]:
    """``modalities`` as a tuple, each one of ``offered``."""
    chosen = (modalities,) if isinstance(modalities, str) else tuple(modalities)
    unknown = [m for m in chosen if m not in offered]
    if unknown:
        raise ValueError(f"{owner}: modality {unknown[0]!r} is not one of {list(offered)}")
    return chosen


# ---------------------------------------------------------------------------------------- media
@dataclass(frozen=True)
class MediaRef:
    """Where one modality of a sample comes from; decoded only by :meth:`load`.

    ``video`` -> ``uint8 [num_frames,H,W,3]`` uniform over ``[start, end)`` (whole clip if unset);
    ``audio`` -> ``float32 [L]`` mono 16 kHz over ``[start, end)``; ``image`` -> RGB PIL image.
    """

    modality: str
    path: str
    start: float | None = None
    end: float | None = None
    num_frames: int = 8

    def load(self, source: MediaFile | None = None) -> Any:
        """The decoded media; ``source`` is an opened :class:`MediaFile` of ``path`` to read it from
        (video and audio of one file then share one container; the arrays are the same)."""
        if self.modality == "video":
            return read_video_segment(source or self.path, num_frames=self.num_frames, start=self.start, end=self.end)
        if self.modality == "audio":
            return read_audio_segment(source or self.path, start=self.start, end=self.end)
        if self.modality == "image":
            return read_image(self.path)
        raise ValueError(f"unknown media modality {self.modality!r}")


def _load_all(refs: tuple[MediaRef, ...]) -> list[Image.Image]:
    return [ref.load() for ref in refs]


@dataclass
class Record:
    """One sample before decoding: plain fields (id, text, label, meta...) and its media."""

    fields: dict[str, Any]
    media: dict[str, MediaRef | tuple[MediaRef, ...]] = field(default_factory=dict)


class RecordDataset(Dataset):
    """Map-style dataset over parsed :class:`Record` s; media decoded in ``__getitem__``.

    Subclasses parse their annotation files into ``self.records`` and set ``self.label_names``.
    A tuple of refs for one modality decodes to a list (image pairs: ``image = [PIL, PIL]``).
    """

    records: list[Record]
    label_names: list[str]

    def set_media_options(self, modalities: Sequence[str], offered: Sequence[str], num_frames: int) -> None:
        """Validate and keep ``modalities`` (a subset of ``offered``) and ``num_frames`` (>= 1)."""
        owner = type(self).__name__
        self.modalities = check_modalities(modalities, offered, owner)
        if int(num_frames) < 1:
            raise ValueError(f"{owner}: num_frames must be >= 1, got {num_frames}")
        self.num_frames = int(num_frames)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        return self.load(index)

    def load(self, index: int, modalities: Collection[str] | None = None) -> dict[str, Any] | SkippedSample:
        """Sample ``index`` with its media decoded; only the media of ``modalities`` when given
        (the others are left out of the sample, not decoded: e.g. slots served from a feature cache)."""
        if not -len(self.records) <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} samples")
        record = self.records[index]
        sample = {key: (dict(value) if isinstance(value, dict) else value) for key, value in record.fields.items()}
        chosen = {m: refs for m, refs in record.media.items() if modalities is None or m in modalities}
        # The video and the audio of one file (an mp4's two streams) share one opened container.
        streams = Counter(
            refs.path for refs in chosen.values() if isinstance(refs, MediaRef) and refs.modality in STREAM_MODALITIES
        )
        files = {path: MediaFile(path) for path, count in streams.items() if count > 1}
        loaders: dict[str, Any] = {}
        for modality, refs in chosen.items():
            if isinstance(refs, tuple):
                loaders[modality] = partial(_load_all, refs)
            elif refs.modality in STREAM_MODALITIES and refs.path in files:
                loaders[modality] = partial(refs.load, files[refs.path])
            else:
                loaders[modality] = refs.load
        try:
            return load_media(sample, loaders)
        finally:
            for file in files.values():
                file.close()

    def sample_views(self) -> list[dict[str, Any]]:
        """Each sample's plain fields with ``<modality>: True`` for the media it has (``[True] * K`` for a
        list of K items), no decoding; what a token budget check needs."""
        return [{**record.fields, **{m: [True] * len(ref) if isinstance(ref, (list, tuple)) else True
                                     for m, ref in record.media.items()}} for record in self.records]

    @property
    def ids(self) -> list[str]:
        """Sample ids in index order (no decoding)."""
        return [str(record.fields["id"]) for record in self.records]
