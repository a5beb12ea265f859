"""Hugging Face ``datasets`` as a source (``data=hf_datasets``): a ``save_to_disk`` folder, a builder over local
files (``parquet``, ``json``, ``csv``, ``imagefolder``, ``audiofolder``, ``videofolder``) or a hub name (resolved
through the Hugging Face cache; offline with ``HF_HUB_OFFLINE=1``).

Rows are read one at a time from the memory-mapped Arrow table: nothing is loaded whole. ``columns`` maps
mmtrain's sample keys to the table's columns (by default each key reads the column of its own name)::

    id, text, label, target_text          plain fields (label: a ClassLabel, or class names with label_names)
    image, audio, video                   media: an Image / Audio / Video feature, encoded bytes or a file path
    start, end                            optional segment of the audio / video, in seconds

Media are decoded by mmtrain's own decoders (PyAV, PIL), never by ``datasets`` (whose audio and video decoding
needs torchcodec): each media column is cast with ``decode=False`` and its bytes (or, without bytes, its file,
which must lie under ``media_root``) are decoded when a sample is read. A sample whose media cannot be decoded
goes to the skip ledger with its id, as for every format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmtrain.data.media import MediaError, read_audio_segment, read_video_segment
from mmtrain.data.images import read_image
from mmtrain.data.skips import SkippedSample, load_media

FIELDS = ("id", "text", "label", "target_text", "start", "end")
MEDIA = ("image", "audio", "video")
BUILDERS = ("parquet", "json", "csv", "arrow", "imagefolder", "audiofolder", "videofolder")


def open_table(*, source: str | None, builder: str | None, data_dir: str | None, data_files: Any, split: str,
               revision: str | None = None, cache_dir: str | None = None, streaming: bool = False,
               num_shards: int = 64) -> tuple[Any, Path | None]:
    """The ``datasets.Dataset`` of ``split`` (with ``streaming``: a ``datasets.IterableDataset``, a ``save_to_disk``
    folder's table cut into ``num_shards`` shards) and the folder its media files may lie in. ``source``: a
    ``save_to_disk`` folder, a folder of data files (parquet...: what a hub dataset's snapshot holds), or a hub name."""
    import datasets

    if builder is not None:
        if builder not in BUILDERS:
            raise ValueError(f"data.builder={builder!r}: one of {', '.join(BUILDERS)} (or give source: a "
                             "save_to_disk folder or a hub name)")
        if data_dir is None and data_files is None:
            raise ValueError(f"data.builder={builder} needs data_dir (a folder) or data_files")
        table = datasets.load_dataset(builder, data_dir=data_dir, data_files=data_files, split=split,
                                      streaming=streaming)
        root = data_dir or (str(Path(data_files).parent) if isinstance(data_files, str) else None)
        return table, Path(root).resolve() if root else None  # media paths are relative to (and stay under) it
    if source is None:
        raise ValueError("an hf_datasets source needs source (a save_to_disk folder or a hub name) or builder")
    folder = Path(source).expanduser()
    if folder.is_dir():
        if not any((folder / name).is_file() for name in ("dataset_dict.json", "state.json")):  # files, not Arrow
            return datasets.load_dataset(str(folder), split=split, streaming=streaming), folder.resolve()
        loaded = datasets.load_from_disk(str(folder))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"{folder} holds splits {sorted(loaded)}, not {split!r} (data.<split>.split)")
            loaded = loaded[split]
        if streaming:  # the table's size stays known (as the split info a hub card states)
            rows = len(loaded)
            loaded = loaded.to_iterable_dataset(num_shards=max(1, min(int(num_shards), rows)))
            loaded.info.splits = datasets.SplitDict({split: datasets.SplitInfo(name=split, num_examples=rows)})
        return loaded, folder.resolve()
    if folder.exists() or source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"hf_datasets source {source}: no such folder (a save_to_disk folder or a hub name)")
    snapshot = hub_snapshot(source, revision=revision, cache_dir=cache_dir)
    return open_table(source=str(snapshot), builder=None, data_dir=None, data_files=None, split=split,
                      streaming=streaming, num_shards=num_shards)[0], \
        snapshot.parent.parent  # the repo's cache folder: its snapshot's links point into blobs/ beside it


def hub_snapshot(repo_id: str, *, revision: str | None, cache_dir: str | None) -> Path:
    """The local snapshot of a hub dataset, through ``huggingface_hub`` (its cache; offline with
    ``HF_HUB_OFFLINE=1``), as for models."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, cache_dir=cache_dir))
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(f"hf_datasets source {repo_id}: not in the Hugging Face cache and the hub cannot be "
                                f"reached (HF_HUB_OFFLINE, or no network): {err}") from err
    except HfHubHTTPError as err:
        raise FileNotFoundError(f"hf_datasets source {repo_id}: the hub refused it ({err})") from err


class HFRows:
    """How the rows of a ``datasets`` table or stream become mmtrain samples: the column mapping (checked), the
    media columns cast undecoded, the label map and the folder path-only media must lie under.

    Args:
        table: a ``datasets.Dataset`` or ``datasets.IterableDataset``; :attr:`table` is it with media undecoded.
        folder: the source's folder (the default ``media_root``).
        name, split: for messages.
        modalities, columns, label_names, num_frames, media_root: as :class:`HFDataset` takes them.
    """

    def __init__(self, table: Any, folder: Path | None, *, name: str, split: str, modalities: Sequence[str],
                 columns: Mapping[str, str] | None = None, label_names: Sequence[str] | None = None,
                 num_frames: int = 8, media_root: str | None = None) -> None:
        import datasets

        self.name = name
        unknown = sorted(set(columns or {}) - set(FIELDS) - set(MEDIA))
        if unknown:
            raise ValueError(f"columns: {unknown} are not sample keys ({', '.join(FIELDS + MEDIA)})")
        names = list(table.column_names or [])
        if not names:
            raise ValueError(f"{name} [{split}]: its columns are unknown before reading (a stream without features); "
                             "give the builder's features or use map-style (streaming=false)")
        mapping = {key: (columns or {}).get(key, key) for key in FIELDS + MEDIA}
        missing = {k: c for k, c in mapping.items() if c != k and c not in names}  # renamed, absent
        if missing:
            raise ValueError(f"{name} [{split}]: columns {missing} name columns it does not have (it has {names})")
        self.columns = {k: c for k, c in mapping.items() if c in names}
        absent = [m for m in modalities if m not in self.columns]  # a media column, or the text one
        if absent:
            raise ValueError(f"{name} [{split}]: no column for modalities {absent}; map them with "
                             f"columns.<modality>=<column> (columns: {names})")
        self.modalities = [m for m in modalities if m in MEDIA]
        for modality in self.modalities:
            column = self.columns[modality]
            table = table.cast_column(column, _undecoded(datasets, table.features[column], f"{name} column {column}"))
        self.table = table
        self.num_frames = int(num_frames)
        self.media_root = Path(media_root).resolve() if media_root else folder
        self.label_names, self._label_index = _labels(table.features.get(self.columns.get("label", "")), label_names,
                                                      f"{name} [{split}]")

    def load(self, row: Mapping[str, Any], index: int | str, modalities: Sequence[str] | None = None
             ) -> dict[str, Any] | SkippedSample:
        """Row ``row`` (``index``: its id when the table has no id column) as a sample with its media decoded (only those of ``modalities`` when given)."""
        sample, segment = self.fields(row, index)
        wanted = [m for m in self.modalities if modalities is None or m in modalities]
        return load_media(sample, {m: self._loader(m, row[self.columns[m]], *segment) for m in wanted})

    def undecoded(self, row: Mapping[str, Any], index: int | str) -> tuple[dict[str, Any], dict[str, bytes | Path],
                                                                      tuple[Any, Any]]:
        """The row before decoding: its sample fields, each media value as encoded bytes or its file, the segment."""
        sample, segment = self.fields(row, index)
        return sample, {m: self._bytes_or_path(m, row[self.columns[m]]) for m in self.modalities}, segment

    def fields(self, row: Mapping[str, Any], index: int | str) -> tuple[dict[str, Any], tuple[Any, Any]]:
        """The row's sample fields (``id``: its column, else ``index``) and its media segment ``(start, end)``."""
        sample: dict[str, Any] = {"id": str(row[self.columns["id"]]) if "id" in self.columns else str(index)}
        for key in ("text", "target_text"):
            if key in self.columns and row[self.columns[key]] is not None:
                sample[key] = str(row[self.columns[key]])
        if "label" in self.columns and self._label_index is not None:
            sample["label"] = self._label_index(row[self.columns["label"]], sample["id"])
        return sample, tuple(row.get(self.columns[k]) if k in self.columns else None for k in ("start", "end"))

    def _loader(self, modality: str, value: Any, start: float | None, end: float | None) -> Any:
        def load() -> Any:
            media = self._bytes_or_path(modality, value)
            if modality == "image":
                return read_image(media)
            if modality == "audio":
                return read_audio_segment(media, start=start, end=end)
            return read_video_segment(media, num_frames=self.num_frames, start=start, end=end)
        return load

    def _bytes_or_path(self, modality: str, value: Any) -> bytes | Path:
        """A media value's bytes, else its file (which must lie under ``media_root``)."""
        if isinstance(value, dict):
            if value.get("bytes"):
                return value["bytes"]
            value = value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if not value:
            raise MediaError("<none>", modality, "the row has no media (neither bytes nor a path)")
        path = Path(str(value))
        path = (self.media_root / path if self.media_root and not path.is_absolute() else path).resolve()
        if self.media_root is None or not path.is_relative_to(self.media_root):
            raise MediaError(path, modality, f"outside media_root {self.media_root} (set data.<split>.media_root)")
        return path


class HFDataset(Dataset):
    """One split of a Hugging Face dataset as mmtrain samples (see the module).

    Args:
        source: a ``save_to_disk`` folder or a hub dataset name (or ``None`` with ``builder``).
        builder: a ``datasets`` builder over local files (``imagefolder``...), with ``data_dir`` / ``data_files``.
        split: the split to read.
        modalities: the media this run reads (each needs its column).
        columns: mmtrain key -> column name, for the keys whose column has another name.
        label_names: class names in index order; taken from a ClassLabel column when not given.
        num_frames: video frames per sample.
        media_root: the folder a path-only media value must lie under (default: the source's folder).
        revision, cache_dir: a hub dataset's revision and Hugging Face cache folder (default: ``HF_HUB_CACHE``).
    """

    def __init__(self, *, modalities: Sequence[str], source: str | None = None, builder: str | None = None,
                 data_dir: str | None = None, data_files: Any = None, split: str = "train",
                 columns: Mapping[str, str] | None = None, label_names: Sequence[str] | None = None,
                 num_frames: int = 8, media_root: str | None = None, revision: str | None = None,
                 cache_dir: str | None = None) -> None:
        table, folder = open_table(source=source, builder=builder, data_dir=data_dir, data_files=data_files,
                                   split=split, revision=revision, cache_dir=cache_dir)
        self.name = source or f"{builder}:{data_dir or data_files}"
        self.rows = HFRows(table, folder, name=self.name, split=split, modalities=modalities, columns=columns,
                           label_names=label_names, num_frames=num_frames, media_root=media_root)
        self.table, self.columns, self.modalities = self.rows.table, self.rows.columns, self.rows.modalities
        self.label_names = self.rows.label_names

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedSample:
        return self.load(index)

    @property
    def ids(self) -> list[str]:
        """Sample ids in index order (the id column, else ``<index>``)."""
        if "id" in self.columns:
            return [str(v) for v in self.table[self.columns["id"]]]
        return [str(i) for i in range(len(self))]

    def load(self, index: int, modalities: Sequence[str] | None = None) -> dict[str, Any] | SkippedSample:
        """Sample ``index`` with its media decoded (only those of ``modalities`` when given)."""
        return self.rows.load(self.table[int(index)], int(index), modalities)

    def undecoded(self, index: int) -> tuple[dict[str, Any], dict[str, bytes | Path], tuple[Any, Any]]:
        """Sample ``index`` before decoding: its plain fields (``id``, ``label`` as an index...), each media value as
        encoded bytes or its file (under ``media_root``) and the segment ``(start, end)``: what ``data pack`` stores."""
        return self.rows.undecoded(self.table[int(index)], int(index))


def _undecoded(datasets: Any, feature: Any, where: str) -> Any:
    """The feature a media column is cast to: its own kind with ``decode=False``; paths and bytes as they are."""
    for kind in ("Image", "Audio", "Video"):
        cls = getattr(datasets, kind, None)
        if cls is not None and isinstance(feature, cls):
            return cls(decode=False)
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "binary", "large_binary"):
        return feature
    raise ValueError(f"{where}: a {type(feature).__name__} feature ({feature}) cannot be decoded as media; give an "
                     "Image, Audio or Video feature, encoded bytes, or file paths")


def _labels(feature: Any, given: Sequence[str] | None, where: str) -> tuple[list[str], Any]:
    """Class names and a ``(value, sample id) -> index`` function (``None`` without a label column)."""
    import datasets

    names = list(getattr(feature, "names", None) or []) if isinstance(feature, datasets.ClassLabel) else []
    if given is not None and names and list(given) != names:
        raise ValueError(f"{where}: label_names {list(given)} differ from the ClassLabel names {names}")
    names = list(given) if given is not None else names
    if feature is None:
        return names, None
    if not names:
        raise ValueError(f"{where}: the label column holds {feature}; give label_names (class names in index order)")
    index = {name: i for i, name in enumerate(names)}

    def to_index(value: Any, sample_id: str) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
            return value
        if isinstance(value, str) and value in index:
            return index[value]
        raise ValueError(f"{where}, sample {sample_id}: label {value!r} is not one of {names}")

    return names, to_index
