"""The datamodule's batch-transfer hook."""

from __future__ import annotations

import torch

from mmtrain.data.datamodule import CpuBatchDataModule


def test_cpu_batches_are_handed_on_as_they_are_and_moved_elsewhere() -> None:
    """The datamodule's batch-transfer hook: the very same batch object on the CPU (no walk), every
    tensor moved for another device (``meta``: a real device without storage)."""
    batch = {"ids": ["a", "b"], "video": torch.zeros(2, 3), "text": {"input_ids": torch.ones(2, 4, dtype=torch.long)}}
    module = CpuBatchDataModule()
    assert module.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    moved = module.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved["ids"] == ["a", "b"]
    assert moved["video"].device.type == "meta" and moved["text"]["input_ids"].device.type == "meta"
    assert batch["video"].device.type == "cpu"
