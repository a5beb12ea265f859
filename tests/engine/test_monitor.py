"""The best checkpoint and early stopping follow the task's own validation metric (``monitor: auto``):
a task kind that does not log ``val/macro_f1`` no longer crashes at the end of its first epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from mmtrain.app.commands.train import prepare, train
from mmtrain.config.compose import compose_config
from mmtrain.config.targets import runtime_prefixes
from mmtrain.engine.build import build_callbacks
from mmtrain.engine.tasks.classification import ClassificationTask
from mmtrain.engine.tasks.contrastive import ContrastiveTask
from mmtrain.engine.tasks.generation import GenerationTask
from mmtrain.engine.tasks.regression import RegressionTask


@pytest.mark.parametrize(("task", "expected"), [
    (ClassificationTask, ("val/macro_f1", "max")), (ContrastiveTask, ("val/r@1_mean", "max")),
    (RegressionTask, ("val/mae", "min")), (GenerationTask, ("val/exact_match", "max")),
])
def test_auto_follows_the_task(task: type, expected: tuple[str, str], tmp_path: Path) -> None:
    cfg, _ = prepare(compose_config([f"run_dir={tmp_path}"]))
    callbacks = build_callbacks(cfg, runtime_prefixes(), task.monitored())
    best = next(c for c in callbacks if isinstance(c, ModelCheckpoint))
    stop = next(c for c in callbacks if isinstance(c, EarlyStopping))
    assert (best.monitor, best.mode) == expected
    assert (stop.monitor, stop.mode) == expected


@pytest.mark.parametrize(("monitor", "mode"), [("val/r@1_mean", "max"), ("val/loss", "min"), ("val/rmse", "min")])
def test_a_named_monitor_with_mode_auto_gets_its_sense(tmp_path: Path, monitor: str, mode: str) -> None:
    cfg, _ = prepare(compose_config([f"run_dir={tmp_path}", f"callbacks.checkpoint.monitor={monitor}"]))
    best = next(c for c in build_callbacks(cfg, runtime_prefixes(), ("val/macro_f1", "max"))
                if isinstance(c, ModelCheckpoint))
    assert (best.monitor, best.mode) == (monitor, mode)


def test_a_named_monitor_is_kept_and_auto_without_a_task_is_named(tmp_path: Path) -> None:
    cfg, _ = prepare(compose_config([f"run_dir={tmp_path}", "callbacks.checkpoint.monitor=val/acc",
                                     "callbacks.checkpoint.mode=max"]))
    best = next(c for c in build_callbacks(cfg, runtime_prefixes(), ("val/mae", "min")) if isinstance(c, ModelCheckpoint))
    assert (best.monitor, best.mode) == ("val/acc", "max")
    with pytest.raises(ValueError, match=r"callbacks.early_stopping.monitor is 'auto'.*callbacks.early_stopping.monitor="):
        build_callbacks(cfg, runtime_prefixes())


@pytest.mark.slow  # one tiny contrastive run without an experiment (~10 s)
def test_contrastive_without_an_experiment_trains_past_its_first_epoch(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    metrics = train(compose_config([
        "model=contrastive", "task=contrastive", "data=synthetic", "data.train.num_samples=16",
        "data.val.num_samples=8", "data.test.num_samples=8", "data.batch_size=8", "data.num_workers=0",
        "trainer.max_epochs=2", "callbacks.progress=null", "logger.tensorboard=null", "evaluate_unimodal=false",
        f"run_dir={tmp_path / 'run'}"]))
    assert metrics["epochs"] == 2 and "r@1_mean" in metrics["test"]
    assert Path(metrics["best_checkpoint"]).is_file()
