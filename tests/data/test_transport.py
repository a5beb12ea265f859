"""Worker batches travel as one shared-memory block: same values, shapes and dtypes as collated in
the main process, every tensor a view of one storage; a real DataLoader with 2 worker processes."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from mmtrain.data.transport import WorkerPacked, pack_tensors


def collate(items: list[int]) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(items[0])
    return {
        "frames": torch.randn(len(items), 3, 5, 7, generator=gen),  # float32, odd sizes: alignment
        "half": torch.randn(len(items), 3, generator=gen).to(torch.float16),
        "mask": torch.randint(0, 2, (len(items), 9), generator=gen).bool(),
        "labels": torch.tensor(items, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
        "transposed": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
        "ids": [str(i) for i in items],
    }


def test_worker_batches_equal_main_process_batches_and_share_one_storage() -> None:
    data = list(range(24))
    plain = list(DataLoader(data, batch_size=4, num_workers=0, collate_fn=WorkerPacked(collate)))
    packed = list(DataLoader(data, batch_size=4, num_workers=2, collate_fn=WorkerPacked(collate)))
    assert len(plain) == len(packed) == 6
    for a, b in zip(plain, packed):
        assert a["ids"] == b["ids"]
        tensors = [k for k, v in a.items() if isinstance(v, torch.Tensor)]
        for key in tensors:
            assert b[key].dtype == a[key].dtype and b[key].shape == a[key].shape
            assert torch.equal(b[key], a[key]), key
        assert len({b[key].untyped_storage().data_ptr() for key in tensors}) == 1  # one block
        assert len({a[key].untyped_storage().data_ptr() for key in tensors}) == len(tensors)  # main: untouched


def test_packed_views_do_not_overlap() -> None:
    batch = pack_tensors(collate([3, 4, 5]))
    batch["frames"].fill_(7.0)
    batch["labels"].zero_()
    fresh = collate([3, 4, 5])
    assert torch.equal(batch["mask"], fresh["mask"]) and torch.equal(batch["half"], fresh["half"])
    assert torch.equal(batch["transposed"], fresh["transposed"])


def test_small_or_special_batches_are_left_alone() -> None:
    single = {"x": torch.ones(2), "ids": ["a"]}
    assert pack_tensors(single) is single
    grad = {"a": torch.ones(2, requires_grad=True), "b": torch.ones(3)}
    assert pack_tensors(grad)["a"] is grad["a"]
