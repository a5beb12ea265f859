"""SIGTERM during training: write a checkpoint, then exit with :data:`EXIT_SIGTERM` (143 = 128 + 15).

How Lightning 2.6.6 handles SIGTERM: while ``fit``/``validate``/``test`` run, its signal connector
installs a handler that only sets ``trainer.received_sigterm`` (and chains any handler installed
before). The loops check the flag after each training batch (after the optimizer step and
``on_train_batch_end``), after each evaluation batch and at epoch end, and raise
``SIGTERMException`` -- a ``SystemExit`` *without a code*, so an uncaught one ends the process with
status **0**, as if training had succeeded. ``_call_and_handle_interrupt`` calls every callback's
``on_exception`` with it, tears down and re-raises it. (Only Ctrl-C, KeyboardInterrupt, is turned
into ``sys.exit(1)`` there.)

So mmtrain:

* :class:`SigtermCheckpoint` (a callback) saves ``<dirpath>/last-step<step>.ckpt`` through
  ``trainer.save_checkpoint`` (the Trainer's CheckpointIO plugin: atomic + manifest) in
  ``on_exception`` when fitting; the checkpoint holds the full state at the step training stopped.
* :func:`exit_on_sigterm` (a context manager around the trainer calls of a run) turns
  ``SIGTERMException`` into :class:`TrainingTerminated`, a ``SystemExit(143)`` naming the checkpoint.
  It is a ``SystemExit``, so ``except Exception`` (k-fold, stages) does not swallow it and an uncaught
  one still exits 143; the CLI catches it to print a message. A SIGTERM that lands after the last
  check of ``fit`` (in ``on_train_end``) is noticed at fit teardown: the next ``validate``/``test``
  stops at once and the run exits 143 (the fit's checkpoints are complete).

Lightning restores the previous SIGTERM handler before ``on_fit_end`` and outside its calls (building
data or the model, writing the report); there SIGTERM keeps its default action: the process dies by
the signal (shell status 143, ``returncode == -15`` from Python), with no training state to save.

**Ctrl-C (SIGINT)** gets the same treatment in a single-process run: while :func:`exit_on_sigterm`
is active, the first Ctrl-C only asks to stop. :class:`SigtermCheckpoint` (placed first among the
callbacks) raises :class:`StopRequested` at the next train batch start, when the previous step has
completed and no other callback has seen the new batch, and writes the resume point in
``on_exception``; the run ends with :class:`TrainingTerminated` and exit status **130**. A second
Ctrl-C stops at once (Lightning's own KeyboardInterrupt path), also with 130; the run then resumes
from its last resume point. Under DDP, Ctrl-C is left to Lightning (every rank would have to agree
on the batch to stop at).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

#: Process exit status after SIGTERM (128 + SIGTERM): not 0 (success) and not 1 (error).
EXIT_SIGTERM = 143
#: Process exit status after Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_SIGINT = 130


class StopRequested(Exception):
    """Raised at a train batch start after Ctrl-C: the previous step is complete, this one not begun."""


class TrainingTerminated(SystemExit):
    """The run stopped on SIGTERM or Ctrl-C; ``code`` is :data:`EXIT_SIGTERM` or :data:`EXIT_SIGINT`.

    Attributes:
        checkpoint: the checkpoint written on the way out (``None`` if none was: not fitting, or it failed).
        global_step: the trainer's step when training stopped.
        error: why no checkpoint could be written, if it could not.
        ctrl_c: stopped by Ctrl-C (SIGINT), not SIGTERM.
        at_once: a second Ctrl-C stopped it mid-step (no checkpoint; the last resume point stands).
        run_dir: the run directory to pass as ``resume=``.
    """

    def __init__(self, checkpoint: Path | None = None, global_step: int | None = None, error: str | None = None,
                 *, ctrl_c: bool = False, at_once: bool = False, run_dir: Path | None = None):
        super().__init__(EXIT_SIGINT if ctrl_c else EXIT_SIGTERM)
        self.checkpoint, self.global_step, self.error = checkpoint, global_step, error
        self.ctrl_c, self.at_once, self.run_dir = ctrl_c, at_once, run_dir

    def __str__(self) -> str:
        where = f" at step {self.global_step}" if self.global_step is not None else ""
        if self.checkpoint is not None:
            saved = f"checkpoint written to {self.checkpoint}; resume from it"
        elif self.at_once:
            saved = "stopped at once, mid-step: the run resumes from its last resume point"
        elif self.error:
            saved = f"no checkpoint could be written ({self.error}); the earlier checkpoints are intact"
        else:
            saved = "training had finished; its checkpoints are complete"
        name = "Ctrl-C (SIGINT)" if self.ctrl_c else "SIGTERM"
        return f"stopped by {name}{where}: {saved} (exit code {self.code})."


class SigtermCheckpoint(pl.Callback):
    """On SIGTERM while fitting, save ``<dirpath>/<filename>.ckpt`` through the trainer.

    Args:
        dirpath: the checkpoint folder (``<run_dir>/checkpoints``).
        filename: file name without ``.ckpt``, formatted with ``step`` (global step) and ``epoch``;
            the default matches the resume checkpoints of :mod:`mmtrain.engine.callbacks.checkpointing`, so
            ``resume=`` continues from it (it is also the newest step in the manifest).
    """

    def __init__(self, dirpath: str | Path, filename: str = "last-step{step:07d}") -> None:
        if not filename:
            raise ValueError("SigtermCheckpoint: filename must not be empty")
        self.dirpath, self.filename = Path(dirpath), filename
        self.received = False
        self.saved: Path | None = None
        self.global_step: int | None = None
        self.error: str | None = None
        self.interrupts = 0  # Ctrl-C presses seen while exit_on_sigterm was active

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.interrupts and not self.received:
            raise StopRequested(f"Ctrl-C: stopping before train batch {batch_idx} of epoch {trainer.current_epoch}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, StopRequested)) or self.received:
            return
        self.received, self.global_step = True, trainer.global_step
        if trainer.state.fn != TrainerFn.FITTING:
            return
        path = self.dirpath / (self.filename.format(step=trainer.global_step, epoch=trainer.current_epoch) + ".ckpt")
        from mmtrain.engine.callbacks.checkpointing import StepCheckpoint

        rotation = next((c for c in trainer.callbacks if isinstance(c, StepCheckpoint)), None)
        try:
            if rotation is not None and rotation.dirpath == self.dirpath:  # joins the rotation, moves last.ckpt
                rotation.save_now(trainer, path.name)
            else:
                trainer.save_checkpoint(path, weights_only=False)  # full state: optimizer, loops, callbacks
        except Exception as err:  # noqa: BLE001  (the exit must still say SIGTERM; the reason is kept)
            self.error = f"{type(err).__name__}: {err}"
            log.error("%s at step %d: could not write %s: %s", self.signal_name, trainer.global_step, path, err)
            return
        self.saved = path
        log.warning("%s at step %d: wrote %s", self.signal_name, trainer.global_step, path)

    @property
    def signal_name(self) -> str:
        """How the stop was asked for: ``Ctrl-C`` or ``SIGTERM``."""
        return "Ctrl-C" if self.interrupts else "SIGTERM"

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if (trainer.received_sigterm or self.interrupts) and not self.received:  # after the loops' last check
            self.received, self.global_step = True, trainer.global_step
            log.warning("%s after %s finished at step %d; stopping before the next stage",
                        self.signal_name, stage, trainer.global_step)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.received:
            raise self.terminated()

    def terminated(self, *, at_once: bool = False) -> TrainingTerminated:
        """The exception a run ends with after SIGTERM or Ctrl-C."""
        return TrainingTerminated(self.saved, self.global_step, self.error, at_once=at_once,
                                  ctrl_c=bool(self.interrupts), run_dir=self.dirpath.parent)


@contextlib.contextmanager
def exit_on_sigterm(trainer: pl.Trainer) -> Iterator[None]:
    """Around a run's ``trainer.fit``/``validate``/``test`` calls: SIGTERM -> :class:`TrainingTerminated`.

    Use with a :class:`SigtermCheckpoint` in ``trainer.callbacks`` (without one, no checkpoint is
    written on SIGTERM but the exit code is still :data:`EXIT_SIGTERM`).
    """
    def callback() -> SigtermCheckpoint | None:
        return next((c for c in trainer.callbacks if isinstance(c, SigtermCheckpoint)), None)

    with _ctrl_c_asks_to_stop(callback, trainer):
        try:
            yield
        except (SIGTERMException, StopRequested) as err:
            found = callback()
            raise (found.terminated() if found else TrainingTerminated(global_step=trainer.global_step)) from err
        except SystemExit as err:  # Lightning's exit after a second Ctrl-C (KeyboardInterrupt -> sys.exit(1))
            found = callback()
            if found is None or found.interrupts < 2 or isinstance(err, TrainingTerminated):
                raise
            found.global_step = trainer.global_step
            raise found.terminated(at_once=True) from err
    found = callback()
    if found is not None and found.received:
        raise found.terminated()


@contextlib.contextmanager
def _ctrl_c_asks_to_stop(callback: Callable[[], SigtermCheckpoint | None], trainer: Any) -> Iterator[None]:
    """While active: the first Ctrl-C asks the trainer's :class:`SigtermCheckpoint` to stop at the next
    batch, a second one raises KeyboardInterrupt (so does any Ctrl-C without that callback, or under
    DDP). Main thread only; the handler before is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    owner = os.getpid()

    def on_sigint(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a DataLoader worker forked meanwhile: it keeps serving the last step
            return
        found = callback() if getattr(trainer, "world_size", 1) == 1 else None
        if found is None:
            raise KeyboardInterrupt
        found.interrupts += 1
        if found.interrupts == 1:
            log.warning("Ctrl-C: saving a resume point after this step, then stopping (Ctrl-C again to stop at once)")
            return
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def exit_code(err: BaseException) -> int | None:
    """The process exit status for ``err`` if it is a SIGTERM / Ctrl-C stop (ours or Lightning's), else ``None``."""
    if isinstance(err, TrainingTerminated):
        return int(err.code)
    if isinstance(err, SIGTERMException):
        return EXIT_SIGTERM
    return None
