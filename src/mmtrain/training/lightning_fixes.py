"""Fixes for the pinned Lightning (2.6, see ``constraints.txt``), applied to the trainers mmtrain builds.

Each fix names the upstream issue it is for, is applied only to the Lightning versions it was checked
against (any other version is left as released, with a debug log line), and goes when the pin moves
to a release that has it.

* ``_ResultMetric.to`` (`Lightning-AI/pytorch-lightning#20388`_, open fix `#21769`_): every
  ``self.log`` call moves the logged value's accumulator to the value's device, and the move walks the
  accumulator's whole ``__dict__`` even when it is already there. On the demo that is ~0.3 ms of a
  ~40 ms CPU training step (0.75%), for every value logged, on every step and validation batch. The fix
  returns at once when the accumulator's states are already on the requested device; any other call
  (another device, a dtype, keyword arguments, a logged ``Metric``) takes Lightning's own path.

.. _Lightning-AI/pytorch-lightning#20388: https://github.com/Lightning-AI/pytorch-lightning/issues/20388
.. _#21769: https://github.com/Lightning-AI/pytorch-lightning/pull/21769
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import lightning
import torch
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric

log = logging.getLogger(__name__)

#: Lightning versions the fixes were checked against (prefix match).
CHECKED_VERSIONS = ("2.6.",)

_released_to = _ResultMetric.to


def _result_metric_to(self: _ResultMetric, *args: Any, **kwargs: Any) -> _ResultMetric:
    """``_ResultMetric.to``, returning ``self`` untouched when asked for the device it is on."""
    if not kwargs and len(args) == 1 and isinstance(args[0], (str, torch.device)) and self.is_tensor:
        target = torch.device(args[0])
        states = [value for value in (self.__dict__.get("value"), self.__dict__.get("cumulated_batch_size"))
                  if value is not None]
        if states and all(isinstance(s, torch.Tensor) and s.device == target for s in states):
            return self
    return _released_to(self, *args, **kwargs)


def applies_to(version: str) -> bool:
    """Whether the fixes were checked against Lightning ``version``."""
    return version.startswith(CHECKED_VERSIONS)


def apply_lightning_fixes() -> bool:
    """Applies the fixes (idempotent); False, with a debug line, on an unchecked Lightning version."""
    if not applies_to(lightning.__version__):
        log.debug("Lightning %s is not one the fixes in %s were checked against %s: left as released",
                  lightning.__version__, __name__, CHECKED_VERSIONS)
        return False
    _ResultMetric.to = _result_metric_to  # type: ignore[method-assign]
    return True


@contextlib.contextmanager
def lightning_as_released() -> Iterator[None]:
    """Runs a block with Lightning's own code (the benchmarks measure plain Lightning this way)."""
    current = _ResultMetric.to
    _ResultMetric.to = _released_to  # type: ignore[method-assign]
    try:
        yield
    finally:
        _ResultMetric.to = current  # type: ignore[method-assign]
