"""A train DataLoader that resumes mid-epoch exactly, whatever the worker count.

Three pieces make the train data a pure function of ``(seed, epoch, position)``:

* :class:`EpochSampler` draws the epoch's order from ``(seed, epoch)``, shards it over ranks and can
  start ``skip`` samples into the epoch (no decoding of the skipped part).
* :class:`KeyedDataset` / :class:`KeyedIterable` tag each raw sample with its epoch, and
  :class:`SeededCollate` seeds Python, NumPy and torch from ``(seed, epoch, sample ids)`` before the
  processor augments the batch, in whichever process (main or worker) collates it. Random crops,
  flips and modality dropout therefore do not depend on which worker drew the batch or on what ran
  before it.
* :class:`ResumableLoader` is a ``DataLoader`` with ``state_dict``/``load_state_dict`` (Lightning
  stores it inside every checkpoint): the epoch and the batches the trainer has finished, plus the
  facts a resume must not change (batch size, world size, dataset fingerprint).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, get_worker_info



def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts, the same in every process and Python run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seed_all(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch's generators.

    Runs at every train batch, so when no accelerator has been initialised only the CPU generator is
    seeded (1 us): ``torch.manual_seed`` would also queue seeds for lazily initialised devices (~90 us).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if torch.cuda.is_initialized() or torch.xpu.is_initialized() or torch.backends.mps.is_available():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with all global generators seeded from ``seed``.

    In a DataLoader worker the generators are simply reseeded (the worker owns them); in the main
    process their states are restored afterwards, so fetching data never moves the training RNG.
    """
    if get_worker_info() is not None:
        seed_all(seed)
        yield
        return
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed_all(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def dataset_fingerprint(dataset: Any) -> str:
    """A short hash of what a dataset holds: its sample ids when it lists them (an ``ids()`` method), else its size
    and kind. An ``ids`` property is not read: listing ids can mean reading every shard index of a remote dataset."""
    listed = getattr(type(dataset), "ids", None)
    if callable(listed) and not isinstance(listed, property):
        text = "\n".join(dataset.ids())
    else:
        size = len(dataset) if hasattr(dataset, "__len__") else None
        text = repr((type(dataset).__name__, size, getattr(dataset, "split", None), getattr(dataset, "seed", None),
                     getattr(dataset, "files", None)))
    return f"{zlib.crc32(text.encode()):08x}"


class EpochSampler(DistributedSampler):
    """Per-epoch order from ``(seed, epoch)``, sharded over ranks, yielding ``(epoch, index)`` keys.

    Like :class:`torch.utils.data.DistributedSampler` (the padding included, so every rank gets the
    same number of samples), which Lightning then leaves in place under DDP. ``skip`` samples of this
    rank's share are left out of the next pass only (a resumed epoch), and ``pinned`` (when set) is
    the epoch of that pass.

    Args:
        dataset: the map-style dataset (only its length is used).
        seed: run seed.
        shuffle: permute per epoch; False keeps the dataset order.
        num_replicas, rank: this process's place in the world (1 and 0 outside DDP).
        epoch_source: the epoch a pass belongs to, asked when the pass starts (the trainer's
            ``current_epoch``). Without it, the last :meth:`set_epoch` decides. Lightning calls
            ``set_epoch`` with its own epoch counter, which after some restarts (an epoch-end
            checkpoint with ``max_steps``) runs one ahead of ``current_epoch``.
    """

    def __init__(self, dataset: Dataset, *, seed: int, shuffle: bool = True, num_replicas: int = 1,
                 rank: int = 0, epoch_source: Callable[[], int] | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0
        self.pinned: int | None = None
        self.epoch_source = epoch_source

    def order(self, epoch: int) -> list[int]:
        """This rank's indices for ``epoch`` (all of them, before any skip)."""
        size = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
            indices = torch.randperm(size, generator=generator).tolist()
        else:
            indices = list(range(size))
        padding = self.total_size - size
        if padding:
            indices += (indices * (padding // max(size, 1) + 1))[:padding]
        return indices[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        if self.pinned is not None:
            epoch = self.pinned
        else:
            epoch = int(self.epoch_source()) if self.epoch_source is not None else self.epoch
        skip, self.skip, self.pinned = self.skip, 0, None
        return iter([(epoch, index) for index in self.order(epoch)[skip:]])


class KeyedDataset(Dataset):
    """Reads ``(epoch, index)`` keys: returns ``(epoch, sample)``, the sample decoded under a seed
    derived from ``(seed, epoch, index)`` (random clip offsets and the like repeat exactly)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[int, Any]:
        epoch, index = key
        at_epoch = getattr(self.dataset, "at_epoch", None)  # a dataset whose samples depend on the epoch (a mixture)
        with seeded(derive_seed(self.seed, "sample", epoch, index)):
            return epoch, (at_epoch(epoch, index) if at_epoch is not None else self.dataset[index])


class KeyedIterable(IterableDataset):
    """Streams ``(epoch, sample)`` pairs from a dataset that shuffles itself (``set_epoch``/``epoch``)."""

    def __init__(self, dataset: IterableDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        epoch = int(getattr(self.dataset, "epoch", 0))
        for sample in self.dataset:
            yield epoch, sample


def sample_id(sample: Any) -> str:
    return str(sample["id"]) if isinstance(sample, dict) else str(getattr(sample, "id", ""))


class SeededCollate:
    """Collates ``(epoch, sample)`` pairs with ``collate``, all generators seeded from the batch.

    The seed is ``(seed, epoch, ids of the batch's samples)``: the same batch is augmented the same
    way in any process, after any resume.
    """

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]], seed: int) -> None:
        self.collate = collate
        self.seed = int(seed)

    def __call__(self, items: list[tuple[int, Any]]) -> dict[str, Any]:
        epochs = {epoch for epoch, _ in items}
        samples = [sample for _, sample in items]
        key = derive_seed(self.seed, "batch", sorted(epochs), [sample_id(s) for s in samples])
        with seeded(key):
            return self.collate(samples)


class ResumeMismatch(ValueError):
    """A checkpoint's data position cannot be applied to the data this run was given."""


def require_unchanged(saved: dict[str, Any], now: dict[str, tuple[str, Any]]) -> None:
    """Refuse a resume whose settings differ from the checkpoint's.

    Args:
        saved: the checkpoint's values by key.
        now: key -> (the setting's name for the user, this run's value); keys the checkpoint lacks pass.

    Raises:
        ResumeMismatch: naming every setting that changed, before and after.
    """
    changed = [f"{name} was {saved[key]}, now {value}" for key, (name, value) in now.items()
               if key in saved and saved[key] != value]
    if changed:
        raise ResumeMismatch(
            "cannot resume exactly: " + "; ".join(changed) + ". Resume with the settings and data of the "
            "interrupted run, or start a new run (without resume=)."
        )


class ResumableLoader(DataLoader):
    """The train ``DataLoader``: Lightning saves its ``state_dict`` in each checkpoint and calls
    ``load_state_dict`` before the first batch of a resumed fit.

    ``progress`` returns ``(epoch, batches finished in that epoch, batches an epoch has)`` as the
    trainer counts them (the loader itself runs ahead: workers and Lightning prefetch); the last is
    the trainer's (``limit_train_batches`` applied), or ``None`` for this loader's own length.
    """

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, int, int | None]] | None = None,
                 fingerprint: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress
        self.fingerprint = fingerprint
        self.discard = 0  # batches of a streamed dataset to drop at the start of the next pass

    def _world(self) -> int:
        return int(getattr(self.sampler, "num_replicas", 1))

    def _epoch_length(self) -> int:
        """Batches an epoch has: the trainer's count (``limit_train_batches``) when it has one."""
        per_epoch = self.progress()[2] if self.progress is not None else None
        return len(self) if per_epoch is None else min(int(per_epoch), len(self))

    def state_dict(self) -> dict[str, Any]:
        epoch, batches, _ = self.progress() if self.progress is not None else (0, 0, None)
        return {"epoch": int(epoch), "batches": int(batches), "batches_per_epoch": self._epoch_length(),
                "batch_size": int(self.batch_size or 0), "world_size": self._world(),
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Point the next pass at the batch after the checkpoint's (the next epoch's first at an end)."""
        require_unchanged(state, {
            "batch_size": ("data.batch_size", int(self.batch_size or 0)),
            "world_size": ("world size (trainer.devices x nodes)", self._world()),
            "batches_per_epoch": ("train batches per epoch (data, data.batch_size, trainer.limit_train_batches)",
                                  self._epoch_length()),
            "fingerprint": ("train dataset fingerprint", self.fingerprint),
        })
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= int(state["batches_per_epoch"]):
            epoch, batches = epoch + 1, 0
        self.set_position(epoch, batches)

    def set_position(self, epoch: int, batches: int) -> None:
        """Make the next pass epoch ``epoch``, starting after its first ``batches`` batches.

        Persistent workers started before (Lightning starts the train iterator before it restores a resumed
        loader's state) are let go: each holds its own copy of a streamed dataset, which would not see the
        position; the next pass starts workers that do.
        """
        stale = getattr(self, "_iterator", None)
        if stale is not None and self.num_workers > 0:
            self._iterator = None
            stale._shutdown_workers()
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)
        inner = getattr(self.dataset, "dataset", self.dataset)
        if callable(getattr(inner, "set_epoch", None)):
            inner.set_epoch(epoch)
        if isinstance(self.sampler, EpochSampler):
            self.sampler.skip = batches * int(self.batch_size or 1)
            self.sampler.pinned = epoch
        elif callable(getattr(inner, "resume_at", None)) and getattr(inner, "batch_size", None) == self.batch_size:
            inner.resume_at(epoch, batches)  # a stream that seeks to its position by plan
        else:
            self.discard = batches

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        iterator = super().__iter__()
        inner = getattr(self.dataset, "dataset", self.dataset)
        if self.num_workers > 0 and callable(getattr(inner, "resume_at", None)):
            inner.resume_at(None)  # the workers took their copies: a later pass (new workers) is whole
        discard, self.discard = self.discard, 0
        for _ in range(discard):  # a stream that cannot seek: decode and drop
            next(iterator, None)
        return iterator
