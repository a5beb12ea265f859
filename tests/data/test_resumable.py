"""The resumable train loader: per-epoch order, rank shards, mid-epoch start, seeded collation."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from mmtrain.data.resumable import (
    EpochSampler,
    KeyedDataset,
    ResumableLoader,
    ResumeMismatch,
    SeededCollate,
    dataset_fingerprint,
    derive_seed,
)


class Items(Dataset):
    """``n`` samples with ids; ``ids()`` like the record datasets."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"id": f"s{index}", "x": float(index)}

    def ids(self) -> list[str]:
        return [f"s{i}" for i in range(self.n)]


def noisy_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Draws from all three global generators, like augmentation does."""
    x = torch.tensor([s["x"] for s in samples])
    noise = torch.rand(len(samples)) + float(np.random.rand()) + random.random()
    return {"ids": [s["id"] for s in samples], "x": x + noise}


def loader(n: int = 10, batch_size: int = 2, workers: int = 0, world: int = 1, rank: int = 0,
           progress: Any = None) -> ResumableLoader:
    data = Items(n)
    return ResumableLoader(KeyedDataset(data, seed=3), batch_size=batch_size,
                           sampler=EpochSampler(data, seed=3, num_replicas=world, rank=rank), num_workers=workers,
                           collate_fn=SeededCollate(noisy_collate, seed=3), progress=progress,
                           fingerprint=dataset_fingerprint(data))


def epoch(loader_: ResumableLoader, number: int) -> list[dict[str, Any]]:
    loader_.sampler.set_epoch(number)
    return list(loader_)


def test_seeds_are_stable_and_distinct() -> None:
    assert derive_seed(0, "order", 1) == derive_seed(0, "order", 1)
    assert len({derive_seed(0, "order", e) for e in range(100)}) == 100


def test_each_epoch_has_its_own_order_and_repeats_exactly() -> None:
    first, second = loader(), loader()
    ids = [[b["ids"] for b in epoch(first, e)] for e in range(2)]
    assert ids[0] != ids[1]
    assert sorted(sum(ids[0], [])) == sorted(f"s{i}" for i in range(10))
    again = epoch(second, 1)
    assert [b["ids"] for b in again] == ids[1]


def test_workers_do_not_change_batches_or_their_augmentation() -> None:
    in_process = epoch(loader(workers=0), 2)
    with_workers = epoch(loader(workers=2), 2)
    assert [b["ids"] for b in in_process] == [b["ids"] for b in with_workers]
    for a, b in zip(in_process, with_workers):
        assert torch.equal(a["x"], b["x"])


def test_collating_in_the_main_process_leaves_its_generators_where_they_were() -> None:
    collate = SeededCollate(noisy_collate, seed=3)
    items = [(0, Items(4)[i]) for i in range(4)]
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    expected = torch.rand(3), np.random.rand(), random.random()
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    first = collate(items)
    assert (torch.rand(3).tolist(), np.random.rand(), random.random()) == (expected[0].tolist(), *expected[1:])
    assert torch.equal(collate(items)["x"], first["x"])  # and the batch's own draws repeat


def test_two_ranks_split_the_global_batch_of_one_process() -> None:
    single = epoch(loader(n=12, batch_size=4), 1)
    ranks = [epoch(loader(n=12, batch_size=2, world=2, rank=r), 1) for r in (0, 1)]
    for k, batch in enumerate(single):
        assert sorted(batch["ids"]) == sorted(ranks[0][k]["ids"] + ranks[1][k]["ids"])


def test_mid_epoch_state_resumes_at_the_next_batch_with_the_same_augmentation() -> None:
    full = epoch(loader(), 1)
    position = {"value": (1, 3, None)}
    running = loader(progress=lambda: position["value"])
    state = running.state_dict()
    assert state["epoch"] == 1 and state["batches"] == 3 and state["batches_per_epoch"] == 5
    resumed = loader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert [b["ids"] for b in rest] == [b["ids"] for b in full[3:]]
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(rest, full[3:]))
    assert len(resumed) == 5  # Lightning counts the whole epoch; only the rest is yielded
    assert [b["ids"] for b in list(resumed)] != [b["ids"] for b in rest]  # the skip applies once


def test_a_finished_epoch_resumes_at_the_start_of_the_next() -> None:
    state = loader(progress=lambda: (0, 5, None)).state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert [b["ids"] for b in resumed] == [b["ids"] for b in epoch(loader(), 1)]


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"batch_size": 5}, "data.batch_size was 2, now 5"),
        ({"world": 2}, "world size (trainer.devices x nodes) was 1, now 2"),
        ({"n": 12}, "train dataset fingerprint was"),
    ],
)
def test_a_resume_that_cannot_be_exact_is_refused(changed: dict[str, int], message: str) -> None:
    state = loader(progress=lambda: (0, 2, None)).state_dict()
    with pytest.raises(ResumeMismatch, match="cannot resume exactly") as err:
        loader(**changed).load_state_dict(state)
    assert message in str(err.value)
