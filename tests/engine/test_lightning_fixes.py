"""The opt-in fixes to the pinned Lightning (``perf.lightning_fixes``): ``self.log`` no longer walks its
accumulator to move it to the device it is on, and callbacks are not called for hooks they do not
override (unless a profiler is on); anything else still goes through Lightning; logged values and the
hooks that run do not change; an unchecked Lightning release is left as released; when the block
ends, Lightning's own functions are back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.trainer import call
from lightning.pytorch.trainer.connectors.logger_connector.result import _Metadata, _ResultMetric, _Sync
from torch import nn
from torch.utils.data import DataLoader

from mmtrain.engine import lightning_fixes
from mmtrain.engine.lightning_fixes import lightning_as_released, lightning_fixes_applied

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


@pytest.fixture
def released_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """Applies the fixes for the test (Lightning's own code is back after it); yields the arguments
    of every call that reaches Lightning's own ``_ResultMetric.to``."""
    calls: list[tuple[Any, ...]] = []
    original = lightning_fixes._released_to

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(lightning_fixes, "_released_to", counting)
    released = _ResultMetric.to, call._call_callback_hooks
    with lightning_fixes_applied() as applied:
        assert applied
        yield calls
    assert (_ResultMetric.to, call._call_callback_hooks) == released  # the block put Lightning's own back


def accumulator() -> _ResultMetric:
    meta = _Metadata(fx="training_step", name="train/loss", on_step=True, on_epoch=True)
    meta.sync = _Sync()
    metric = _ResultMetric(meta, True)
    metric.update(torch.tensor(2.0), 4)
    return metric


def test_moving_to_the_device_it_is_on_returns_at_once(released_calls: list[tuple[Any, ...]]) -> None:
    metric = accumulator()
    assert metric.to(torch.device("cpu")) is metric
    assert metric.to("cpu") is metric
    assert released_calls == []
    assert float(metric.value) == 8.0 and int(metric.cumulated_batch_size) == 4


def test_any_other_move_takes_lightnings_path(released_calls: list[tuple[Any, ...]]) -> None:
    metric = accumulator()
    metric.to(torch.device("meta"))  # another device (meta: real tensors without storage)
    assert metric.value.device.type == "meta" and metric.cumulated_batch_size.device.type == "meta"
    metric.to(torch.device("meta"))  # now it is there: returns at once
    other = accumulator()
    other.to(device="cpu")  # keyword arguments are not the hot path's form
    assert released_calls == [(torch.device("meta"),), ()]


class Logs(pl.LightningModule):
    """A linear model whose training and validation steps log their loss per step and per epoch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)

    def _loss(self, batch: torch.Tensor, split: str) -> torch.Tensor:
        loss = self.layer(batch).pow(2).mean()
        self.log(f"{split}/loss", loss, on_step=True, on_epoch=True, batch_size=len(batch))
        return loss

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._loss(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def logged_metrics() -> dict[str, float]:
    data = DataLoader(torch.randn(20, 3, generator=torch.Generator().manual_seed(1)), batch_size=3)
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(Logs(), train_dataloaders=data, val_dataloaders=data)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_logged_values_are_those_of_lightning_as_released(released_calls: list[tuple[Any, ...]]) -> None:
    fixed = logged_metrics()
    assert released_calls == []  # every self.log of the run took the short path
    with lightning_as_released():
        released = logged_metrics()
    assert {"train/loss_epoch", "val/loss_epoch"} <= set(fixed)
    assert fixed == released
    assert _ResultMetric.to is lightning_fixes._result_metric_to  # restored after the block


@pytest.mark.parametrize("version", ["2.7.0", "2.6.7", "2.6.6rc1"])
def test_an_unchecked_lightning_release_is_left_as_released(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(lightning, "__version__", version)
    with lightning_fixes_applied() as applied:
        assert not applied
        assert _ResultMetric.to is lightning_fixes._released_to
        assert call._call_callback_hooks is lightning_fixes._released_dispatch


def test_nothing_is_swapped_outside_the_block_even_after_an_error() -> None:
    with pytest.raises(RuntimeError), lightning_fixes_applied():
        assert _ResultMetric.to is lightning_fixes._result_metric_to
        raise RuntimeError("boom")
    assert _ResultMetric.to is lightning_fixes._released_to
    assert call._call_callback_hooks is lightning_fixes._released_dispatch


class Recorder(pl.Callback):
    """Overrides three per-step hooks; records each call and the module's hook name, and logs from one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.calls.append(("on_train_batch_start", pl_module._current_fx_name))

    def on_before_backward(self, trainer: pl.Trainer, pl_module: Any, loss: torch.Tensor) -> None:
        self.calls.append(("on_before_backward", pl_module._current_fx_name))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.calls.append(("on_train_batch_end", pl_module._current_fx_name))
        pl_module.log("callback/batch", float(batch_idx), on_step=True, on_epoch=True)


class Idle(pl.Callback):
    """Overrides no hook; counts how often Lightning asks for its state key (once per profiled call)."""

    asked = 0

    @property
    def state_key(self) -> str:
        type(self).asked += 1
        return "Idle"


def fit_with_callbacks(*callbacks: pl.Callback, profiler: Any = None) -> pl.Trainer:
    data = DataLoader(torch.randn(12, 3, generator=torch.Generator().manual_seed(1)), batch_size=3)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1, callbacks=list(callbacks),
                         profiler=profiler)
    trainer.fit(Logs(), train_dataloaders=data)
    return trainer


def test_only_callbacks_that_override_a_hook_are_called_as_lightning_calls_them(
        released_calls: list[tuple[Any, ...]]) -> None:
    runs = {}
    for name in ("fixed", "released"):
        recorder, idle, instance = Recorder(), Idle(), Idle()
        Idle.asked = 0
        seen: list[int] = []
        instance.on_before_zero_grad = lambda trainer, pl_module, optimizer, seen=seen: seen.append(1)
        with lightning_as_released() if name == "released" else contextlib.nullcontext():
            trainer = fit_with_callbacks(idle, recorder, instance)
        runs[name] = (recorder.calls, Idle.asked, len(seen), float(trainer.callback_metrics["callback/batch_epoch"]))
    fixed, released = runs["fixed"], runs["released"]
    assert fixed[0] == released[0] and len(fixed[0]) == 12  # 4 steps x 3 hooks, in order
    assert {fx for _, fx in fixed[0]} == {"on_train_batch_start", "on_before_backward", "on_train_batch_end"}
    assert fixed[2] == released[2] == 4  # a hook set on the instance is called too
    assert fixed[3] == released[3] == 1.5  # logging from a callback hook works: mean of 0..3
    assert released[1] > 2 * 4 * 6  # Lightning: two idle callbacks x every hook of every step
    assert fixed[1] < 5  # fixed: only outside the dispatch (the callback list's checks at setup)


def test_with_a_profiler_every_callback_hook_is_dispatched_and_profiled(
        released_calls: list[tuple[Any, ...]]) -> None:
    from lightning.pytorch.profilers import SimpleProfiler

    profiler = SimpleProfiler()
    fit_with_callbacks(Idle(), profiler=profiler)
    assert "[Callback]Idle.on_before_backward" in profiler.recorded_durations
