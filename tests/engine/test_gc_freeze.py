"""``perf.gc_freeze``: with the main process's objects frozen, a full collection no longer copies the
pages its forked workers share; a run freezes only while its workers live, unfreezes only what it
froze, and leaves a host's own frozen objects alone."""

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


MIB = 2**20
OBJECTS = 400_000  # small lists: tens of MiB of tracked Python objects on top of what torch keeps


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Every test starts and ends with nothing frozen (the collector walks every object again)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def private_growth_after_collect(freeze: bool) -> float:
    """MiB the main process's private memory (USS) grows by a full ``gc.collect()`` while a forked
    worker is alive and the main process holds :data:`OBJECTS` tracked lists; with ``freeze``, the
    objects are frozen before the worker forks (what :class:`FreezeBeforeFork` does at ``setup``)."""
    held = [[i] for i in range(OBJECTS)]
    loader = DataLoader(list(range(8)), batch_size=4, num_workers=1, persistent_workers=True,
                        multiprocessing_context="fork")
    if freeze:
        gc.freeze()
    iterator = iter(loader)
    assert torch.equal(next(iterator), torch.tensor([0, 1, 2, 3]))  # the worker is up and shares our pages
    process = psutil.Process()
    before = process.memory_full_info().uss
    gc.collect()
    after = process.memory_full_info().uss
    assert next(iterator).tolist() == [4, 5, 6, 7]
    del iterator, loader, held
    gc.unfreeze()
    return (after - before) / MIB


def test_a_full_collection_with_a_live_worker_copies_the_heap_unless_frozen(unfrozen: None) -> None:
    plain = private_growth_after_collect(freeze=False)
    frozen = private_growth_after_collect(freeze=True)
    # Measured: plain about 127 MiB (every page of objects the collector walked is now private), frozen 0.04.
    assert plain > 20, f"the control lost its effect: plain DataLoader grew only {plain:.1f} MiB"
    assert frozen < 3, f"frozen objects were still copied: {frozen:.1f} MiB on a full collection"


class FreezeCounts(pl.Callback):
    """How many objects are frozen while train and validation batches arrive."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.seen.append(gc.get_freeze_count())

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self.seen.append(gc.get_freeze_count())


SYNTHETIC = ["data=synthetic", "data.train.num_samples=16", "data.val.num_samples=8", "data.test.num_samples=8",
             "data.batch_size=8", "trainer.max_epochs=1", "callbacks.progress=null", "logger.tensorboard=null",
             "evaluate_unimodal=false"]


def train_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str, gc_freeze: bool = True) -> FreezeCounts:
    from mmtrain.app.commands.train import train
    from mmtrain.app.perf import PerfSettings
    from mmtrain.config.compose import compose_config

    probe = FreezeCounts()
    probe_trainers(monkeypatch, probe)
    tmp_path.mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)
    train(compose_config([*SYNTHETIC, *overrides, f"run_dir={tmp_path / 'run'}"]), perf=PerfSettings(gc_freeze=gc_freeze))
    return probe


@pytest.mark.slow  # one tiny training run with a worker per loader (~15 s)
def test_a_training_run_freezes_while_its_workers_live_and_releases_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    probe = train_with(tmp_path, monkeypatch, "data.num_workers=1")
    assert probe.seen and min(probe.seen) > 1000  # the main process's objects, frozen before the fork
    assert gc.get_freeze_count() == 0  # each stage's teardown handed them back to the collector


def test_without_workers_or_without_the_setting_nothing_is_frozen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    assert max(train_with(tmp_path / "a", monkeypatch, "data.num_workers=0").seen) == 0
    assert max(train_with(tmp_path / "b", monkeypatch, "data.num_workers=1", gc_freeze=False).seen) == 0


def test_a_hosts_own_frozen_objects_are_left_frozen_and_not_added_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    kept = [[i] for i in range(1000)]
    gc.freeze()
    host = gc.get_freeze_count()
    probe = train_with(tmp_path, monkeypatch, "data.num_workers=1")
    assert probe.seen and max(probe.seen) <= host  # nothing of the run was frozen on top of the host's
    # and the host's objects are still frozen (the permanent generation is not among gc.get_objects())
    assert gc.get_freeze_count() > 0 and not any(obj is kept[0] for obj in gc.get_objects())
    del kept
