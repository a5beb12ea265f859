"""Hugging Face streaming (``data=hf_datasets data.train.streaming=true``): a ``datasets.IterableDataset`` read
in equal shares by every rank and DataLoader worker, resumable exactly.

The source is opened as :mod:`~mmtrain.data.formats.hf_datasets` opens it, with ``streaming=True`` (a builder over
local files, a folder of data files, a hub name; a ``save_to_disk`` folder is cut into ``num_shards`` shards),
its rows mapped and decoded by the same :class:`~mmtrain.data.formats.hf_datasets.HFRows`.

* **Shares.** Every reader (rank ``r`` of ``R``, worker ``w`` of ``W``) reads its own part of the stream,
  ``datasets.distributed.split_dataset_by_node`` with ``R * W`` nodes (whole shards per reader when their count
  allows, else every ``R*W``-th row). Each rank yields ``samples // R`` rows an epoch (``samples``: the split's
  stated size, or ``samples_per_epoch``), cut into whole-batch blocks per worker
  (:func:`~mmtrain.data.stream_plan.worker_block`): ranks stay in step under DDP, and a reader whose part runs
  short starts its part again (logged).
* **Order.** With ``shuffle``, ``datasets``' own shuffle: the shard order and a ``shuffle_buffer``-row buffer,
  seeded by ``seed`` and the epoch. A reader's rows are a pure function of ``(seed, epoch, reader)``.
* **Exact resume.** After ``b`` batches of an epoch, each worker had delivered a number of batches
  :func:`~mmtrain.data.stream_plan.delivered` computes; a resumed pass gives worker ``i`` the role of the worker
  whose turn it takes and skips the rows that role delivered, *undecoded* (the rows are read, their media are
  not decoded). ``datasets``' ``state_dict`` would resume a reader at its shard and offset without reading the
  rows, but it drops the shuffle buffer (so the order after a resume would differ); for flat-cost resume at any
  position pack the data (``mmtrain data pack``, ``shards.source=``).
* **Ids.** The ``id`` column, else a blake2b of the row's fields and media bytes (stable across epochs and
  resumes, where a row number is not).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from mmtrain.data.formats.hf_datasets import HFDataset, HFRows, open_table
from mmtrain.data.skips import SkippedSample
from mmtrain.data.stream_plan import StreamState, delivered, worker_block

log = logging.getLogger(__name__)


class HFStreamDataset(StreamState, IterableDataset):
    """One split of a Hugging Face dataset, streamed (see the module).

    Args:
        source, builder, data_dir, data_files, split, columns, label_names, num_frames, media_root, revision,
            cache_dir, modalities: as for :class:`~mmtrain.data.formats.hf_datasets.HFDataset`.
        samples_per_epoch: rows an epoch has over all ranks; needed when the stream does not state its size.
        shuffle: shuffle per epoch (shard order and a buffer); off for val and test.
        shuffle_buffer: rows in ``datasets``' shuffle buffer.
        seed: the shuffle's seed (the run's ``seed``).
        num_shards: shards a ``save_to_disk`` folder is cut into (the most readers that get whole shards).
        world_size, rank: this process's place (default: ``torch.distributed``'s, else 1 and 0).
        batch_size: the loader's (set by the datamodule): workers get whole batches, and resume needs it.
    """

    def __init__(self, *, modalities: Sequence[str], source: str | None = None, builder: str | None = None,
                 data_dir: str | None = None, data_files: Any = None, split: str = "train",
                 columns: Mapping[str, str] | None = None, label_names: Sequence[str] | None = None,
                 num_frames: int = 8, media_root: str | None = None, revision: str | None = None,
                 cache_dir: str | None = None, samples_per_epoch: int | None = None, shuffle: bool = True,
                 shuffle_buffer: int = 1000, seed: int = 0, num_shards: int = 64, world_size: int | None = None,
                 rank: int | None = None, batch_size: int | None = None) -> None:
        stream, folder = open_table(source=source, builder=builder, data_dir=data_dir, data_files=data_files,
                                    split=split, revision=revision, cache_dir=cache_dir, streaming=True,
                                    num_shards=num_shards)
        self.name = source or f"{builder}:{data_dir or data_files}"
        self.split = split
        self.rows = HFRows(stream, folder, name=self.name, split=split, modalities=modalities, columns=columns,
                           label_names=label_names, num_frames=num_frames, media_root=media_root)
        self.label_names = self.rows.label_names
        stated = _stated_size(self.rows.table, split)
        if samples_per_epoch is None and stated is None:
            raise ValueError(f"{self.name} [{split}]: the stream does not state its size; give "
                             f"data.{split if split in ('train', 'val', 'test') else '<split>'}.samples_per_epoch "
                             "(rows an epoch reads over all ranks)")
        self.samples = int(samples_per_epoch if samples_per_epoch is not None else stated)  # type: ignore[arg-type]
        if self.samples < 1:
            raise ValueError(f"{self.name} [{split}]: samples_per_epoch must be >= 1, got {self.samples}")
        self.shuffle, self.seed, self.shuffle_buffer = bool(shuffle), int(seed), int(shuffle_buffer)
        self.stream = self.rows.table.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer) if shuffle \
            else self.rows.table
        self.world_size, self.rank, self.batch_size = world_size, rank, batch_size
        #: what a resume's fingerprint compares (the data, its size and order settings)
        self.files = [self.name, split, self.samples, self.shuffle, self.shuffle_buffer, int(num_shards)]
        self.init_stream_state()

    # -- shares ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Rows this rank yields per epoch (over all its workers)."""
        rank_rows = self.samples // self._rank()[1]
        if rank_rows == 0:
            raise ValueError(f"{self.name} [{self.split}]: {self.samples} rows cannot be shared by "
                             f"{self._rank()[1]} processes; use fewer devices or more data")
        return rank_rows

    def _role(self, epoch: int, worker: int, workers: int) -> tuple[int, int, int]:
        """``(role, rows to skip, rows to yield)`` of this worker in the pass: its own block, or on a resumed pass
        the rest of the block of the worker whose turn it takes (:mod:`mmtrain.data.stream_plan`)."""
        blocks = [worker_block(len(self), w, workers, self.batch_size) for w in range(workers)]
        resume = self.take_resume()
        if resume is None or resume[0] != epoch:
            return worker, 0, blocks[worker][1] - blocks[worker][0]
        size = int(self.batch_size or 1)
        given, first = delivered([-(-(stop - start) // size) for start, stop in blocks], resume[1])
        role = (first + worker) % workers
        return role, given[role] * size, blocks[role][1] - blocks[role][0]

    # -- iteration ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[dict[str, Any] | SkippedSample]:
        epoch = self.epoch
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self._rank()
        role, skip, rows = self._role(epoch, worker, workers)
        node, nodes = rank * workers + role, world * workers
        hashed = "id" not in self.rows.columns
        reader = self._reader(epoch, node, nodes)
        try:
            for row in islice(reader, skip, rows):  # skipped rows: read, not decoded
                yield self.rows.load(row, content_id(row) if hashed else "")
        finally:  # a part read only partly: its file readers end now, not while the interpreter shuts down
            reader.close()

    def _reader(self, epoch: int, node: int, nodes: int) -> Iterator[dict[str, Any]]:
        """Reader ``node``'s rows of the epoch, its part started again whenever it ends (never empty)."""
        from datasets.distributed import split_dataset_by_node

        part = split_dataset_by_node(self.stream, rank=node, world_size=nodes)
        part.set_epoch(epoch)
        while True:
            seen = 0
            for batch in part.iter(batch_size=1):  # not iter(part): in a worker that would split it again
                seen += 1
                yield {column: values[0] for column, values in batch.items()}
            if seen == 0:
                raise ValueError(f"{self.name} [{self.split}]: reader {node} of {nodes} (ranks x workers) gets no "
                                 "rows; use fewer workers or devices, or a source with more shards")
            log.info("%s [%s] epoch %d: reader %d of %d read its %d rows and starts them again (its part is "
                     "shorter than its share)", self.name, self.split, epoch, node, nodes, seen)


def content_id(row: Mapping[str, Any]) -> str:
    """blake2b of a row's values (media bytes included): the id of a row that has none."""
    digest = hashlib.blake2b(digest_size=8)
    for column in sorted(row):
        value = row[column]
        if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
            digest.update(column.encode() + b"\0" + bytes(value["bytes"]))
            value = value.get("path")
        digest.update(column.encode() + b"\0" + json.dumps(value, default=str).encode() + b"\0")
    return f"row-{digest.hexdigest()}"


def _stated_size(stream: Any, split: str) -> int | None:
    """The split's row count when the stream states it (a ``save_to_disk`` folder, a hub card's split info)."""
    splits = getattr(getattr(stream, "info", None), "splits", None) or {}
    info = splits.get(split) if hasattr(splits, "get") else None
    rows = getattr(info, "num_examples", None)
    return int(rows) if rows else None


def hf_source(*, modalities: Sequence[str], source: str | None = None, builder: str | None = None,
              data_dir: str | None = None, data_files: Any = None, split: str = "train",
              columns: Mapping[str, str] | None = None, label_names: Sequence[str] | None = None,
              num_frames: int = 8, media_root: str | None = None, revision: str | None = None,
              cache_dir: str | None = None, streaming: bool = False, samples_per_epoch: int | None = None,
              shuffle: bool = True, shuffle_buffer: int = 1000, seed: int = 0,
              num_shards: int = 64) -> HFDataset | HFStreamDataset:
    """``data=hf_datasets``' dataset: map-style (:class:`~mmtrain.data.formats.hf_datasets.HFDataset`, the run's
    sampler orders it) or, with ``streaming``, a :class:`HFStreamDataset` (``samples_per_epoch``, ``shuffle``,
    ``shuffle_buffer``, ``seed`` and ``num_shards`` are its settings)."""
    common = dict(modalities=modalities, source=source, builder=builder, data_dir=data_dir, data_files=data_files,
                  split=split, columns=columns, label_names=label_names, num_frames=num_frames,
                  media_root=media_root, revision=revision, cache_dir=cache_dir)
    if streaming:
        return HFStreamDataset(**common, samples_per_epoch=samples_per_epoch, shuffle=shuffle,
                               shuffle_buffer=shuffle_buffer, seed=seed, num_shards=num_shards)
    if samples_per_epoch is not None:
        raise ValueError(f"hf_datasets [{split}]: samples_per_epoch applies to streaming=true only (map-style "
                         "epochs read every row)")
    return HFDataset(**common)
