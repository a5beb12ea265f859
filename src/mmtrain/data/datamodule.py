"""``MultimodalDataModule``: datasets per split + the processor as collate function."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from mmtrain.data.cached_features import CachedFeatureDataset
from mmtrain.data.resumable import (
    EpochSampler,
    KeyedDataset,
    KeyedIterable,
    ResumableLoader,
    SeededCollate,
    dataset_fingerprint,
)
from mmtrain.data.sources import NamedSources
from mmtrain.data.transport import WorkerPacked



class BatchProcessor(Protocol):
    """What the datamodule asks of a processor (:class:`mmtrain.models.processing.MultimodalProcessor`
    is one): raw samples -> a batch, plainly or with the train split's augmentation."""

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]: ...

    def collate_train(self, samples: list[dict[str, Any]]) -> dict[str, Any]: ...

class CpuBatchDataModule(pl.LightningDataModule):
    """A ``LightningDataModule`` whose loaders yield CPU tensors: on the CPU a batch is handed on as it
    is, not walked to move nothing (about 0.1-0.3 ms a step for a multimodal batch); to any other
    device it moves as Lightning moves it.

    The hook lives on the datamodule, not the task: Lightning warns on every run when a
    ``LightningModule`` overrides a batch-transfer hook while a datamodule is passed.
    """

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if device.type == "cpu":
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


class MultimodalDataModule(CpuBatchDataModule):
    """Wraps built datasets (raw samples) into DataLoaders collated by ``processor``.

    Args:
        train, val, test: datasets returning raw-sample dicts; ``val``/``test`` optional. ``val`` may map
            source names to datasets: metrics per source (:mod:`mmtrain.data.sources`).
        processor: turns a list of raw samples into a batch.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        seed: run seed; the train order and augmentation of every epoch derive from it
            (:mod:`mmtrain.data.resumable`), so a resumed run sees the same batches.

    ``feature_cache`` (set by :func:`~mmtrain.models.feature_cache.setup_feature_cache`): when set, each
    loader reads its split through :class:`~mmtrain.data.cached_features.CachedFeatureDataset`, which
    leaves the media of cached encoder slots undecoded for samples whose features are on disk.
    """

    def __init__(
        self,
        *,
        train: Dataset,
        processor: BatchProcessor,
        val: Dataset | Mapping[str, Dataset] | None = None,
        test: Dataset | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.splits: dict[str, Dataset] = {"train": train}
        #: names of the val sources when ``val`` is a mapping of datasets (one loader and metrics each)
        self.val_sources: list[str] = []
        if isinstance(val, Mapping) and not isinstance(val, Dataset):
            val = NamedSources(val, "val")
            self.val_sources = val.names
        if val is not None:
            self.splits["val"] = val
        if test is not None:
            self.splits["test"] = test
        self.processor = processor
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0 (0: load in the main process), got {num_workers}")
        self.seed = int(seed)
        self.label_names = self._label_names()
        self.feature_cache: Any = None

    def _label_names(self) -> list[str]:
        names = getattr(self.splits["train"], "label_names", None)
        if names is None:
            raise ValueError("the train dataset has no 'label_names'; it must expose its label map ([] if unlabelled).")
        for split, dataset in self.splits.items():
            other = getattr(dataset, "label_names", names)
            if list(other) != list(names):
                raise ValueError(f"data.{split} has labels {list(other)} but data.train has {list(names)}.")
        return list(names)

    def set_epoch(self, epoch: int) -> None:
        """Tell datasets that reshuffle per epoch (streamed parquet) which epoch starts."""
        for dataset in self.splits.values():
            if callable(getattr(dataset, "set_epoch", None)):
                dataset.set_epoch(epoch)

    def _served(self, split: str) -> Dataset:
        """``split``'s dataset, wrapped to serve cached features before decoding when the cache is on
        (map-style datasets in a trainer only: the plan's keys are computed now, in this process, under
        the trainer's device and precision)."""
        dataset = self.splits[split]
        cache = self.feature_cache
        if cache is None or self.trainer is None or isinstance(dataset, IterableDataset):
            return dataset
        if hasattr(dataset, "at_epoch"):
            raise ValueError(f"the feature cache cannot serve data.{split}: a mixture's positions hold other samples "
                             "every epoch; turn the cache off or train from one source.")
        plan = cache.plan(split, self.trainer, dataset)
        return CachedFeatureDataset(dataset, plan) if plan is not None else dataset

    def _loader(self, split: str, dataset: Dataset | None = None) -> DataLoader[Any]:
        """Val/test batches in dataset order (Lightning shards them over ranks under DDP); ``dataset``: one named
        source of the split instead of all of it."""
        if split not in self.splits:
            raise ValueError(f"no '{split}' dataset configured (data.{split}).")
        return DataLoader(
            dataset if dataset is not None else self._served(split),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=WorkerPacked(self.processor.collate),
            persistent_workers=self.num_workers > 0,
        )

    def _progress(self) -> tuple[int, int, int | None]:
        """``(epoch, train batches finished in it, batches an epoch has)`` as the trainer counts them
        (the last is ``trainer.num_training_batches``: ``trainer.limit_train_batches`` applied; ``None``
        before the trainer knows it)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0, None
        per_epoch = trainer.num_training_batches
        per_epoch = int(per_epoch) if per_epoch not in (None, float("inf")) else None
        epochs = trainer.fit_loop.epoch_progress.current
        if epochs.started < epochs.ready:  # between epochs (on_train_epoch_start): none of this one yet
            return trainer.current_epoch, 0, per_epoch
        return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed, per_epoch

    def train_dataloader(self) -> ResumableLoader:
        """Train batches in a per-epoch order from ``seed``, resumable mid-epoch (:class:`ResumableLoader`)."""
        dataset = self.splits["train"]
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if isinstance(dataset, IterableDataset):
            if hasattr(dataset, "batch_size") and dataset.batch_size is None:
                dataset.batch_size = self.batch_size  # worker shards of whole batches: len(loader) is exact
            keyed: Dataset = KeyedIterable(dataset)
            sampler = None
        else:
            keyed = KeyedDataset(self._served("train"), self.seed)
            sampler = EpochSampler(dataset, seed=self.seed, num_replicas=world, rank=rank,
                                   epoch_source=lambda: self._progress()[0])
        return ResumableLoader(
            keyed,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=WorkerPacked(SeededCollate(self.processor.collate_train, self.seed)),
            persistent_workers=self.num_workers > 0,
            progress=self._progress,
            fingerprint=dataset_fingerprint(dataset),  # of the unwrapped dataset: the same with the cache on
        )

    def val_dataloader(self) -> DataLoader[Any] | list[DataLoader[Any]]:
        """The val batches; with named val sources one loader per source, in ``val_sources`` order."""
        if self.val_sources:
            return [self._loader("val", source) for source in self.splits["val"].sources]  # type: ignore[attr-defined]
        return self._loader("val")

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader("test")
