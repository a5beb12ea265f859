"""``MultimodalDataModule``: datasets per split + the processor as collate function."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, IterableDataset

from mmtrain.hf.processing import MultimodalProcessor


class MultimodalDataModule(pl.LightningDataModule):
    """Wraps built datasets (raw samples) into DataLoaders collated by ``processor``.

    Args:
        train, val, test: datasets returning raw-sample dicts; ``val``/``test`` optional.
        processor: turns a list of raw samples into a batch.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        *,
        train: Dataset,
        processor: MultimodalProcessor,
        val: Dataset | None = None,
        test: Dataset | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.splits: dict[str, Dataset] = {"train": train}
        if val is not None:
            self.splits["val"] = val
        if test is not None:
            self.splits["test"] = test
        self.processor = processor
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.label_names = self._label_names()

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

    def _loader(self, split: str, shuffle: bool) -> DataLoader[Any]:
        if split not in self.splits:
            raise ValueError(f"no '{split}' dataset configured (data.{split}).")
        dataset = self.splits[split]
        iterable = isinstance(dataset, IterableDataset)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle and not iterable,  # a streamed dataset shuffles itself (set_epoch)
            num_workers=self.num_workers,
            collate_fn=self.processor.collate_train if split == "train" else self.processor.collate,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader[Any]:
        return self._loader("test", shuffle=False)
