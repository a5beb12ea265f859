"""Exact resume: per-step random streams, a per-step loss log, and what a checkpoint must carry.

Lightning restores weights, optimizer, scheduler, loop counters and callback states. What it does
not restore, this module and :mod:`mmtrain.data.resumable` do:

* **Random numbers.** :class:`ExactResume` seeds Python, NumPy and torch at the start of every
  train batch from ``(seed, rank, epoch, batch)``; dropout in step *n* is the same whether the run
  was interrupted or not, and whenever the checkpoint was written. The generators' states are also
  saved and restored, for code that draws numbers outside a step.
* **Data position and augmentation** (the train loader's own state; see ``mmtrain.data.resumable``).
* **Run files.** ``train_steps.csv`` (one line per train batch: epoch, batch, global step, loss) and
  the skip ledger are cut back to their length at the checkpoint, so the replayed steps are not
  written twice.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from mmtrain.data.resumable import (
    ResumableLoader,
    derive_seed,
    require_unchanged,
    seed_all,
)
from mmtrain.core.fileio import LineAppender, truncate

log = logging.getLogger(__name__)

#: Trainer settings a resume must keep (refused by name when they change): they decide the data
#: position (``limit_train_batches``), the validation points (``val_check_interval``,
#: ``check_val_every_n_epoch``, ``limit_val_batches``), the optimizer steps (``accumulate_grad_batches``)
#: and the end of the run (``max_steps``), so a changed one cannot continue bit-identically.
LOOP_SETTINGS = ("accumulate_grad_batches", "limit_train_batches", "limit_val_batches", "val_check_interval",
                 "check_val_every_n_epoch", "max_steps")
STEPS_NAME = "train_steps.csv"
STEPS_HEADER = "epoch,batch,global_step,loss\n"


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch CPU generator states, in weights-only-loadable types."""
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


class ExactResume(pl.Callback):
    """Seeds every train batch, logs each step's loss, and checks a resume keeps what exactness needs.

    Args:
        run_dir: the run directory (``train_steps.csv`` is written there by global rank 0).
        seed: the run seed.
    """

    def __init__(self, *, run_dir: str, seed: int) -> None:
        self.steps_path = Path(run_dir) / STEPS_NAME
        self.steps_log = LineAppender(self.steps_path, header=STEPS_HEADER)  # open from the first line to fit end
        self.seed = int(seed)
        self._restored: dict[str, Any] | None = None

    def _contract(self, trainer: pl.Trainer) -> dict[str, Any]:
        """What a resume must keep to be exact: the seed and the loop settings that decide which batch
        comes when, where an epoch ends, when validation runs and where the run stops."""
        loop = {name: getattr(trainer, name, None) for name in LOOP_SETTINGS}
        return {"seed": self.seed, **{k: (v if isinstance(v, (int, float, str)) or v is None else repr(v))
                                      for k, v in loop.items()}}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        if self._restored is not None:  # restored before this hook (most strategies)
            self._check_contract(trainer, self._restored)

    def _check_contract(self, trainer: pl.Trainer, state: dict[str, Any]) -> None:
        """Refuse, as soon as the checkpoint is read and before anything runs (even when the run it
        continues had finished), a resume whose exactness settings changed."""
        require_unchanged(state.get("contract", {}), {
            k: (k if k == "seed" else f"trainer.{k}", v) for k, v in self._contract(trainer).items()})

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        size = self.steps_path.stat().st_size if self.steps_path.exists() else 0
        loader = trainer.train_dataloader if trainer is not None else None
        return {
            "steps_bytes": size,
            "rng": rng_state(),
            "contract": self._contract(trainer) if trainer is not None else {},
            "data": loader.state_dict() if isinstance(loader, ResumableLoader) else {},
            # What the last validation reported, as callbacks read it (early stopping at an epoch end
            # that max_steps cuts short reads the previous validation's value); Lightning keeps it
            # in memory only, so a resumed process would otherwise start without it.
            "callback_metrics": {k: v.detach().cpu().clone() for k, v in
                                 (trainer.callback_metrics if trainer is not None else {}).items()
                                 if isinstance(v, torch.Tensor)},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:  # a strategy that restores after on_fit_start (DeepSpeed, FSDP)
            self._check_contract(trainer, self._restored)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored is None:
            return
        state, self._restored = self._restored, None
        set_rng_state(state["rng"])
        self._restore_data_position(trainer, state.get("data") or {})
        metrics = trainer.callback_metrics  # Lightning's own dict, filled again by every later log
        for key, value in (state.get("callback_metrics") or {}).items():
            metrics.setdefault(key, value.to(pl_module.device))
        if trainer.is_global_zero:
            self.steps_log.close()
            truncate(self.steps_path, int(state.get("steps_bytes", 0)))
            from mmtrain.engine.callbacks.checkpointing import drop_checkpoints_after

            # written after the resume point (e.g. a best-k one): the replay writes them again
            drop_checkpoints_after(self.steps_path.parent / "checkpoints", trainer.global_step)

    @staticmethod
    def _restore_data_position(trainer: pl.Trainer, data: dict[str, Any]) -> None:
        """Point the train loader at the checkpoint's position and restart its iterator.

        Lightning creates the train iterator (and prefetches a batch) before it restores a checkpoint
        whenever ``configure_optimizers`` asks for ``estimated_stepping_batches``, so the position
        is applied here, after the restore, and the iterator made again.
        """
        loader = trainer.train_dataloader
        if not data or not isinstance(loader, ResumableLoader):
            return
        loader.load_state_dict(data)
        fetcher = trainer.fit_loop._data_fetcher  # private in Lightning 2.6 (pinned): the prefetching iterator
        if fetcher is not None:
            iter(fetcher)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        seed_all(derive_seed(self.seed, "step", trainer.global_rank, trainer.current_epoch, batch_idx))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        value = repr(float(loss)) if isinstance(loss, torch.Tensor) else ""
        self.steps_log.write(f"{trainer.current_epoch},{batch_idx},{trainer.global_step},{value}\n")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps_log.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.steps_log.close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.steps_log.close()
