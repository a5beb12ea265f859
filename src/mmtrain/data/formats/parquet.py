"""Streamed parquet with encoded images + caption, or question + answer, and an optional label.

Columns (names configurable): image bytes in ``image_bytes`` (binary) or in a struct column
``image`` with a ``bytes`` field (Hugging Face ``datasets`` layout); ``caption`` (-> ``text``,
contrastive), or ``question`` (-> ``text``) with ``answer`` (-> ``target_text``); optional
``sample_id`` and label column.

Streaming: the unit of work is one row group. A pass reads one row group at a time with
``ParquetFile.read_row_group(i, columns=<only the used ones>)`` (no pre-buffering, no threads), so
Arrow holds one row group's columns at a time, never the file. With ``shuffle``, the row-group order
and the rows inside each group are permuted from ``(seed, epoch)``; call :meth:`set_epoch` before
each epoch. The epoch lives in a shared-memory tensor, so DataLoader workers that persist across
epochs see it too. The epoch's rows are shared among distributed ranks and, within a rank, among
its DataLoader workers, in one of two ways (``even_shards``):

* even (training; the default with ``shuffle``): the epoch's row stream (row groups in epoch order,
  rows in their in-group order) is cut into ``world_size`` equal contiguous blocks of
  ``rows // world_size``, one per rank. Every rank yields the same number of rows in the same
  number of batches - under DDP a rank with more batches would wait forever for the others in the
  gradient all-reduce. The last ``rows % world_size`` rows of each epoch's stream (at most
  ``world_size - 1``, different rows each epoch with ``shuffle``) are left out and logged.
* by row group (evaluation; the default without ``shuffle``): whole row groups go to the ranks
  (``units[rank::world_size]``). Every row is yielded exactly once per pass over all ranks, none left
  out; ranks may get different counts, which evaluation tolerates (metrics are reduced over ranks
  at the end of the pass).

A rank's share is then cut into contiguous blocks, one per DataLoader worker (a reader opens only
the row groups its block touches). With ``batch_size`` (the loader's) the blocks are whole batches,
so the workers' batches add up to exactly ``ceil(len() / batch_size)`` = ``len(loader)``, the count
Lightning stops an epoch at; without it the blocks are near-equal in rows, and a worker's partial
last batch can push the real count above ``len(loader)``, whose extra batches Lightning never reads.
Either way a rank's rows do not depend on its worker count, which makes ``len()`` exact per rank.
A resumed pass (:meth:`resume_at`) starts each worker past the rows it already gave, unread.

Construction reads only the footers (schema, row counts) and the label column (to reject an
unknown label with its file and row; rows are numbered from 0 within each file, in errors, in
``meta["row"]`` and in default ids); images are decoded while iterating, and a broken one yields a
:class:`~mmtrain.data.skips.SkippedSample` naming the parquet file, row and column.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch.utils.data import IterableDataset, get_worker_info

from mmtrain.data.formats.common import LabelMap, check_modalities
from mmtrain.data.media import MediaError
from mmtrain.data.images import read_image
from mmtrain.data.skips import SkippedSample, load_media
from mmtrain.data.stream_plan import StreamState, cut, delivered, worker_block

log = logging.getLogger(__name__)

OFFERED = ("image", "text")


@dataclass(frozen=True)
class _Layout:
    """Per file: image column and kind (``binary``/``struct``; None if not loaded), id column, columns read."""

    image: str
    kind: str | None
    ident: str | None
    read: list[str]


@dataclass(frozen=True)
class _Unit:
    """One row group: file index, row-group index, rows, index of its first row in the file."""

    file: int
    group: int
    rows: int
    first_row: int


def expand_files(files: str | Sequence[str]) -> list[str]:
    """Paths from a glob or a list of paths/globs, each list entry's matches sorted."""
    patterns = [files] if isinstance(files, str) else list(files)
    found: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise FileNotFoundError(f"parquet pattern {pattern} matches no file")
        for path in matches:
            if not Path(path).is_file():
                raise FileNotFoundError(f"parquet file {path} does not exist")
        found.extend(matches)
    if not found:
        raise FileNotFoundError("no parquet file given")
    return found


def _uniform(*keys: int) -> float:
    """A deterministic number in ``[0, 1)`` from integer keys (stable across processes)."""
    digest = hashlib.blake2b(struct.pack(f"<{len(keys)}q", *keys), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


class ParquetDataset(StreamState, IterableDataset):
    """Image + text (+ label) rows streamed from parquet, row group by row group.

    Args:
        files: a glob (``data/train-*.parquet``) or a list of paths/globs.
        text_column: column mapped to ``text`` (``caption``, or ``question`` for QA).
        target_column: column mapped to ``target_text`` (``answer`` for QA), or None.
        image_column: binary column or struct column with a ``bytes`` field; None picks
            ``image_bytes`` if present, else ``image``.
        label_column: column with class names (or indices); None for unlabelled data.
        label_names: class names in index order (required with ``label_column``).
        id_column: column of sample ids; None uses ``sample_id`` if present, else
            ``"<file name>:<row>"``.
        modalities: which of ``image``, ``text`` to load.
        text_dropout: probability that a row's ``text`` becomes ``""`` (deterministic given
            ``seed``, epoch, file and row).
        shuffle: permute row groups and rows within each group per epoch.
        seed: seed of the shuffle and of the text dropout.
        rank, world_size: override the distributed rank (default: ``torch.distributed`` if
            initialised, else a single process).
        even_shards: give every rank exactly ``rows // world_size`` rows per epoch (needed to
            train under DDP; see the module docstring), or split whole row groups over ranks with
            no row left out (evaluation). ``None`` follows ``shuffle`` (train splits shuffle,
            evaluation splits do not). Can also be set as an attribute before iterating.
        batch_size: the DataLoader's batch size, so that worker shards are whole batches (see the
            module docstring); ``None`` splits rows evenly over workers. Also settable as an attribute.

    Yields: ``{"id": str, "image": PIL RGB, "text": str, "target_text": str (QA), "label": int
    (if labelled), "meta": {"file", "row"}}`` or a :class:`~mmtrain.data.skips.SkippedSample`.
    """

    def __init__(
        self,
        *,
        files: str | Sequence[str],
        text_column: str | None = "caption",
        target_column: str | None = None,
        image_column: str | None = None,
        label_column: str | None = None,
        label_names: Sequence[str] = (),
        id_column: str | None = None,
        modalities: Sequence[str] = OFFERED,
        text_dropout: float = 0.0,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        even_shards: bool | None = None,
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.modalities = check_modalities(modalities, OFFERED, owner)
        if not 0.0 <= float(text_dropout) <= 1.0:
            raise ValueError(f"{owner}: text_dropout must be in [0, 1], got {text_dropout}")
        labels = LabelMap(label_names, owner)
        if (label_column is None) != (not labels):
            raise ValueError(f"{owner}: give label_column and label_names together (or neither)")
        if (rank is None) != (world_size is None):
            raise ValueError(f"{owner}: give rank and world_size together (or neither)")
        if rank is not None and world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"{owner}: needs 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.files = expand_files(files)
        self.label_names = labels.names
        self._labels = labels
        self.text_column, self.target_column, self.label_column = text_column, target_column, label_column
        self.text_dropout, self.shuffle, self.seed = float(text_dropout), bool(shuffle), int(seed)
        self.rank, self.world_size = rank, world_size
        self.even_shards = bool(shuffle) if even_shards is None else bool(even_shards)
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"{owner}: batch_size must be a positive integer, got {batch_size}")
        self.batch_size = None if batch_size is None else int(batch_size)
        self._logged_epoch = -1
        self.init_stream_state()
        self.units: list[_Unit] = []
        self._layouts = [self._inspect(i, path, image_column, id_column) for i, path in enumerate(self.files)]

    # ------------------------------------------------------------------------------ construction
    def _inspect(self, index: int, path: str, image_column: str | None, id_column: str | None) -> _Layout:
        """Check one file's columns, add its row groups to ``units``, check its labels."""
        try:
            handle = pq.ParquetFile(path, pre_buffer=False)
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"{path}: not a readable parquet file ({err})") from err
        with handle:
            schema = handle.schema_arrow
            image = image_column or ("image_bytes" if "image_bytes" in schema.names else "image")
            kind = self._image_kind(path, schema, image) if "image" in self.modalities else None
            ident = id_column or ("sample_id" if "sample_id" in schema.names else None)
            text = self.text_column if "text" in self.modalities else None
            wanted = [c for c in (text, self.target_column, self.label_column, ident) if c]
            missing = [c for c in wanted if c not in schema.names]
            if missing:
                raise ValueError(f"{path}: no column {missing[0]!r}; its columns are {schema.names}")
            first = 0
            for group in range(handle.num_row_groups):
                rows = handle.metadata.row_group(group).num_rows
                self.units.append(_Unit(index, group, rows, first))
                if self.label_column is not None:
                    self._check_labels(handle, group, first, path)
                first += rows
        return _Layout(image=image, kind=kind, ident=ident, read=sorted({*wanted, *([image] if kind else [])}))

    def _check_labels(self, handle: pq.ParquetFile, group: int, first: int, path: str) -> None:
        column = handle.read_row_group(group, columns=[self.label_column], use_threads=False).column(0)
        for offset, value in enumerate(column.to_pylist()):
            self._labels.index(value, f"{path} row {first + offset}", str(self.label_column))

    @staticmethod
    def _image_kind(path: str, schema: pa.Schema, column: str) -> str:
        if column not in schema.names:
            raise ValueError(f"{path}: no image column {column!r}; its columns are {schema.names}")
        kind = schema.field(column).type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            return "binary"
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            return "struct"
        raise ValueError(f"{path}: image column {column!r} is {kind}, not binary or a struct with 'bytes'")

    # ------------------------------------------------------------------------------ epochs, shards
    @property
    def total_rows(self) -> int:
        """Rows in all files (from the parquet footers)."""
        return sum(unit.rows for unit in self.units)

    def _epoch_units(self, epoch: int) -> list[_Unit]:
        units = self.units
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(units))
            units = [units[i] for i in order]
        return units

    def _rank_units(self, epoch: int) -> list[_Unit]:
        rank, world = self._rank()
        return self._epoch_units(epoch)[rank::world]

    def rows_per_rank(self) -> int:
        """Rows every rank yields per epoch with ``even_shards``: ``total_rows // world_size``.

        Raises:
            ValueError: fewer rows than ranks.
        """
        world = self._rank()[1]
        quota = self.total_rows // world
        if quota == 0:
            raise ValueError(f"{type(self).__name__}: {self.total_rows} rows in {self.files} cannot be shared by "
                             f"{world} processes; use fewer devices or more data.")
        return quota

    def rows_left_out(self) -> int:
        """Rows no rank yields in an epoch (``total_rows % world_size`` with ``even_shards``, else 0)."""
        if not self.even_shards:
            return 0
        return self.total_rows - self._rank()[1] * self.rows_per_rank()

    def _rank_slices(self, epoch: int) -> list[tuple[_Unit, int, int]]:
        """This rank's share of the epoch as ``(unit, start, stop)`` slices of each group's row order."""
        if not self.even_shards:
            return [(unit, 0, unit.rows) for unit in self._rank_units(epoch)]
        quota = self.rows_per_rank()
        rank = self._rank()[0]
        return cut([(unit, 0, unit.rows) for unit in self._epoch_units(epoch)], rank * quota, (rank + 1) * quota)

    def _plan(self, epoch: int, worker: int = 0, workers: int = 1) -> list[tuple[_Unit, int, int]]:
        """``(unit, start, stop)``: the slices of each row group's (epoch) row order this reader yields."""
        share = self._rank_slices(epoch)
        if workers == 1:
            return share
        return cut(share, *worker_block(sum(stop - start for _, start, stop in share), worker, workers, self.batch_size))

    def __len__(self) -> int:
        """Rows this rank yields per epoch (over all its workers), from parquet metadata."""
        if self.even_shards:
            return self.rows_per_rank()
        return sum(unit.rows for unit in self._rank_units(self.epoch))

    # ------------------------------------------------------------------------------ iteration
    def _resumed_plan(self, epoch: int, worker: int, workers: int) -> list[tuple[_Unit, int, int]]:
        """This worker's rows of the pass: all of its block, or, on a resumed pass, the rest of the block of the
        worker whose turn it takes (:mod:`mmtrain.data.stream_plan`)."""
        resume = self.take_resume()
        if resume is None or resume[0] != epoch:
            return self._plan(epoch, worker, workers)
        rows = sum(stop - start for _, start, stop in self._rank_slices(epoch))
        blocks = [worker_block(rows, w, workers, self.batch_size) for w in range(workers)]
        size = int(self.batch_size or 1)
        given, first = delivered([-(-(stop - start) // size) for start, stop in blocks], resume[1])
        role = (first + worker) % workers
        plan = self._plan(epoch, role, workers)
        return cut(plan, given[role] * size, sum(stop - start for _, start, stop in plan))

    def __iter__(self) -> Iterator[dict[str, Any] | SkippedSample]:
        epoch = self.epoch
        worker = get_worker_info()
        plan = self._resumed_plan(epoch, *((worker.id, worker.num_workers) if worker is not None else (0, 1)))
        self._announce(epoch, worker.id if worker is not None else 0)
        handle: pq.ParquetFile | None = None
        current = -1
        try:
            for unit, start, stop in plan:
                if unit.file != current:
                    if handle is not None:
                        handle.close()
                    handle, current = pq.ParquetFile(self.files[unit.file], pre_buffer=False), unit.file
                yield from self._group(handle, unit, epoch, start, stop)
        finally:
            if handle is not None:
                handle.close()

    def _announce(self, epoch: int, worker: int) -> None:
        """Log, once per epoch (rank 0, first worker), how many rows the even split leaves out."""
        left = self.rows_left_out()
        if left and worker == 0 and self._rank()[0] == 0 and epoch != self._logged_epoch:
            self._logged_epoch = epoch
            world = self._rank()[1]
            log.info("parquet epoch %d: %d of %d rows left out so that each of the %d ranks yields %d rows "
                     "(the rows differ per epoch with shuffle)", epoch, left, self.total_rows, world,
                     self.rows_per_rank())

    def _group(self, handle: pq.ParquetFile, unit: _Unit, epoch: int, start: int = 0,
               stop: int | None = None) -> Iterator[dict[str, Any] | SkippedSample]:
        layout = self._layouts[unit.file]
        table = handle.read_row_group(unit.group, columns=layout.read, use_threads=False)
        columns = {name: table.column(name).to_pylist() for name in layout.read}
        del table  # the Python copies are all that is kept of this row group
        order: Sequence[int] = range(unit.rows)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, unit.file, unit.group]).permutation(unit.rows)
        for offset in order[start:stop]:
            yield self._sample(columns, int(offset), unit, epoch, layout)
        columns.clear()

    def _sample(
        self, columns: dict[str, list[Any]], offset: int, unit: _Unit, epoch: int, layout: _Layout
    ) -> dict[str, Any] | SkippedSample:
        path, row = self.files[unit.file], unit.first_row + offset
        sample: dict[str, Any] = {
            "id": str(columns[layout.ident][offset]) if layout.ident else f"{Path(path).name}:{row}",
            "meta": {"file": path, "row": row},
        }
        if "text" in self.modalities and self.text_column:
            text = columns[self.text_column][offset]
            dropped = self.text_dropout > 0 and _uniform(self.seed, epoch, unit.file, row) < self.text_dropout
            sample["text"] = "" if dropped or text is None else str(text)
        if self.target_column:
            target = columns[self.target_column][offset]
            sample["target_text"] = "" if target is None else str(target)
        if self.label_column:
            value = columns[self.label_column][offset]
            sample["label"] = self._labels.index(value, f"{path} row {row}", self.label_column)
        if layout.kind is None:
            return sample
        cell = columns[layout.image][offset]
        data = cell.get("bytes") if layout.kind == "struct" and cell is not None else cell
        return load_media(sample, {"image": lambda: _decode(data, f"{path} row {row} column {layout.image}")})


def _decode(data: bytes | None, where: str) -> Any:
    """Encoded image bytes -> RGB PIL; errors name the parquet file, row and column."""
    if data is None:
        raise MediaError(where, "image", "no image bytes (null)")
    try:
        return read_image(data)
    except MediaError as err:
        raise MediaError(where, "image", err.reason) from err
