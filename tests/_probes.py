"""Adding test callbacks to the trainers ``mmtrain.app.commands.train`` builds."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest


def probe_trainers(monkeypatch: pytest.MonkeyPatch, *callbacks: pl.Callback) -> None:
    """Every trainer ``mmtrain.app.commands.train.build_trainer`` builds while ``monkeypatch`` is active gets ``callbacks``."""
    import mmtrain.app.commands.train as run_module

    build = run_module.build_trainer

    def with_probes(*args: Any, **kwargs: Any) -> pl.Trainer:
        trainer = build(*args, **kwargs)
        trainer.callbacks.extend(callbacks)
        return trainer

    monkeypatch.setattr(run_module, "build_trainer", with_probes)


class MetricsAtEnd(pl.Callback):
    """Keeps ``trainer.callback_metrics`` as floats when training ends (``.metrics``)."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def on_train_end(self, trainer: pl.Trainer, task: pl.LightningModule) -> None:
        self.metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
