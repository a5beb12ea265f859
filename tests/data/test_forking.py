"""ForkSharingLoader: a full collection in the main process no longer copies the pages its workers share."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import psutil
import pytest
import torch
from _probes import probe_trainers
from torch.utils.data import DataLoader

from mmtrain.data.forking import ForkSharingLoader

MIB = 2**20
OBJECTS = 400_000  # small lists: tens of MiB of tracked Python objects on top of what torch keeps


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Every test starts and ends with nothing frozen (the collector walks every object again)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def private_growth_after_collect(loader_class: type[DataLoader]) -> float:
    """MiB the main process's private memory (USS) grows by a full ``gc.collect()`` while a worker
    forked by ``loader_class`` is alive and the main process holds :data:`OBJECTS` tracked lists."""
    held = [[i] for i in range(OBJECTS)]
    loader = loader_class(list(range(8)), batch_size=4, num_workers=1, persistent_workers=True,
                          multiprocessing_context="fork")
    iterator = iter(loader)
    assert torch.equal(next(iterator), torch.tensor([0, 1, 2, 3]))  # the worker is up and shares our pages
    process = psutil.Process()
    before = process.memory_full_info().uss
    gc.collect()
    after = process.memory_full_info().uss
    assert next(iterator).tolist() == [4, 5, 6, 7]
    del iterator, loader, held
    return (after - before) / MIB


def test_a_full_collection_with_a_live_worker_copies_the_heap_unless_frozen(unfrozen: None) -> None:
    plain = private_growth_after_collect(DataLoader)
    gc.unfreeze()
    sharing = private_growth_after_collect(ForkSharingLoader)
    # Measured: plain about 127 MiB (every page of objects the collector walked is now private), frozen 0.04.
    assert plain > 20, f"the control lost its effect: plain DataLoader grew only {plain:.1f} MiB"
    assert sharing < 3, f"ForkSharingLoader still copied {sharing:.1f} MiB on a full collection"


def test_without_workers_nothing_is_frozen(unfrozen: None) -> None:
    batches = list(ForkSharingLoader(list(range(6)), batch_size=3))
    assert [b.tolist() for b in batches] == [[0, 1, 2], [3, 4, 5]]
    assert gc.get_freeze_count() == 0


def test_spawned_workers_share_nothing_so_nothing_is_frozen(unfrozen: None) -> None:
    loader = ForkSharingLoader(list(range(4)), batch_size=2, num_workers=1, multiprocessing_context="spawn")
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
    assert gc.get_freeze_count() == 0


class FreezeCounts(pl.Callback):
    """How many objects are frozen while train and validation batches arrive."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.seen.append(gc.get_freeze_count())

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self.seen.append(gc.get_freeze_count())


@pytest.mark.slow  # one tiny training run with a worker per loader (~15 s)
def test_a_training_run_freezes_while_its_workers_live_and_releases_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    from mmtrain.config.compose import compose_config
    from mmtrain.training.run import train

    probe = FreezeCounts()
    probe_trainers(monkeypatch, probe)
    monkeypatch.chdir(tmp_path)
    train(compose_config([
        "data=synthetic", "data.train.num_samples=16", "data.val.num_samples=8", "data.test.num_samples=8",
        "data.batch_size=8", "data.num_workers=1", "trainer.max_epochs=1", "callbacks.progress=null",
        "logger.tensorboard=null", "evaluate_unimodal=false", f"run_dir={tmp_path / 'run'}",
    ]))
    assert probe.seen and min(probe.seen) > 1000  # the main process's objects, frozen before the fork
    assert gc.get_freeze_count() == 0  # each stage's teardown handed them back to the collector
