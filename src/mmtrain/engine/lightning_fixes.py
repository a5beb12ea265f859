"""Two fixes for the pinned Lightning's per-step overhead, opt-in and scoped (``perf.lightning_fixes``).

Nothing here runs at import. :func:`lightning_fixes_applied` swaps the two functions in for the
length of a ``with`` block (``mmtrain train`` wraps its run in it; the Python API only when asked)
and puts back whatever was there when the block ends, also on an exception. Each fix names the
upstream issue it is for, applies only to the exact Lightning releases it was checked against (any
other is left as released, with an info line), and goes when the pin moves to a release that has it.

* ``_ResultMetric.to`` (`Lightning-AI/pytorch-lightning#20388`_, open fix `#21769`_): every
  ``self.log`` call moves the logged value's accumulator to the value's device, and the move walks the
  accumulator's whole ``__dict__`` even when it is already there. On the demo that is ~0.3 ms of a
  ~40 ms CPU training step (0.75%), for every value logged, on every step and validation batch. The fix
  returns at once when the accumulator's states are already on the requested device; any other call
  (another device, a dtype, keyword arguments, a logged ``Metric``) takes Lightning's own path.
* ``call._call_callback_hooks``: Lightning calls every hook of every callback, and wraps each call in
  a profiler block named after the callback's ``state_key``, even where the callback does not
  override the hook (the base ``Callback`` method does nothing). With mmtrain's default callbacks
  that is ~30 empty calls a training step, ~0.2 ms of a ~40 ms CPU step. When no profiler is
  configured (``PassThroughProfiler``, whose blocks record nothing), callbacks that do not override
  the hook are skipped; those that do are called as Lightning calls them, in the same order, with
  the module's ``_current_fx_name`` set for ``self.log``. With a profiler, or for the
  ``monitoring_callbacks`` split of ``on_train_epoch_end``, Lightning's own dispatch runs. (The same
  idea as meta-pytorch/tnt#455, "only run callback methods that implement something".)

.. _Lightning-AI/pytorch-lightning#20388: https://github.com/Lightning-AI/pytorch-lightning/issues/20388
.. _#21769: https://github.com/Lightning-AI/pytorch-lightning/pull/21769
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from operator import is_
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.trainer import call
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric

log = logging.getLogger(__name__)

#: The exact Lightning releases the fixes were checked against.
CHECKED_VERSIONS = ("2.6.6",)

_released_to = _ResultMetric.to
_released_dispatch = call._call_callback_hooks


def _result_metric_to(self: _ResultMetric, *args: Any, **kwargs: Any) -> _ResultMetric:
    """``_ResultMetric.to``, returning ``self`` untouched when asked for the device it is on."""
    if not kwargs and len(args) == 1 and isinstance(args[0], (str, torch.device)) and self.is_tensor:
        target = torch.device(args[0])
        states = [value for value in (self.__dict__.get("value"), self.__dict__.get("cumulated_batch_size"))
                  if value is not None]
        if states and all(isinstance(s, torch.Tensor) and s.device == target for s in states):
            return self
    return _released_to(self, *args, **kwargs)


def _overrides(callback: pl.Callback, hook_name: str) -> bool:
    """Whether ``callback`` has its own ``hook_name`` (not the base ``Callback``'s empty method)."""
    return hook_name in vars(callback) or getattr(type(callback), hook_name, None) is not getattr(
        pl.Callback, hook_name, None)


def _overriding(trainer: pl.Trainer, hook_name: str) -> list[pl.Callback]:
    """The trainer's callbacks that override ``hook_name``, in order; worked out once per hook for as
    long as ``trainer.callbacks`` holds the same callbacks (the snapshot keeps them alive, so an
    ``is`` comparison cannot be fooled by a reused id)."""
    snapshot = tuple(trainer.callbacks)
    cached = trainer.__dict__.get("_mmtrain_overriding")
    if cached is None or len(cached[0]) != len(snapshot) or not all(map(is_, cached[0], snapshot)):
        cached = (snapshot, {})
        trainer.__dict__["_mmtrain_overriding"] = cached
    found = cached[1].get(hook_name)
    if found is None:
        found = cached[1][hook_name] = [callback for callback in snapshot if _overrides(callback, hook_name)]
    return found


def _call_callback_hooks(trainer: pl.Trainer, hook_name: str, *args: Any,
                         monitoring_callbacks: bool | None = None, **kwargs: Any) -> None:
    """``call._call_callback_hooks`` without the callbacks that do not override ``hook_name``, when
    no profiler is configured (see the module docstring)."""
    if monitoring_callbacks is not None or type(trainer.profiler) is not PassThroughProfiler:
        _released_dispatch(trainer, hook_name, *args, monitoring_callbacks=monitoring_callbacks, **kwargs)
        return
    callbacks = _overriding(trainer, hook_name)
    if not callbacks:
        return
    pl_module = trainer.lightning_module
    if pl_module:
        previous, pl_module._current_fx_name = pl_module._current_fx_name, hook_name
    try:
        for callback in callbacks:
            fn = getattr(callback, hook_name)
            if callable(fn):
                fn(trainer, trainer.lightning_module, *args, **kwargs)
    finally:
        if pl_module:
            pl_module._current_fx_name = previous


def applies_to(version: str) -> bool:
    """Whether the fixes were checked against Lightning ``version`` (exact release)."""
    return version in CHECKED_VERSIONS


@contextlib.contextmanager
def lightning_fixes_applied() -> Iterator[bool]:
    """Runs a block with the fixes in place (yields True), or, on a Lightning release they were not
    checked against, as released (yields False, with an info line). What was there before is back
    when the block ends."""
    if not applies_to(lightning.__version__):
        log.info("perf.lightning_fixes: Lightning %s is not a release the fixes in %s were checked against "
                 "%s; left as released", lightning.__version__, __name__, CHECKED_VERSIONS)
        yield False
        return
    previous = _ResultMetric.to, call._call_callback_hooks
    _ResultMetric.to, call._call_callback_hooks = _result_metric_to, _call_callback_hooks  # type: ignore[method-assign]
    try:
        yield True
    finally:
        _ResultMetric.to, call._call_callback_hooks = previous  # type: ignore[method-assign]


@contextlib.contextmanager
def lightning_as_released() -> Iterator[None]:
    """Runs a block with Lightning's own code (the benchmarks measure plain Lightning this way)."""
    current = _ResultMetric.to, call._call_callback_hooks
    _ResultMetric.to, call._call_callback_hooks = _released_to, _released_dispatch  # type: ignore[method-assign]
    try:
        yield
    finally:
        _ResultMetric.to, call._call_callback_hooks = current  # type: ignore[method-assign]
